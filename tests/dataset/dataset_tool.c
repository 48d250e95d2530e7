/* tests/dataset/dataset_tool.c: the C dataset reader and synthetic writer as a
 * small command for the Python tests (not installed):
 *   dataset_tool synth CONFIG OUT N SEED [MULTI_IMAGE_EVERY]
 *   dataset_tool check CONFIG PATH      opens PATH and reads every sample
 * Exit status 0 when it worked; errors go to stderr as vlmtrain prints them. */
#include <stdio.h>
#include <stdlib.h>

#include "common/vlm.h"
#include "io/config.h"
#include "io/dataset.h"

static int check(const char *config, const char *path) {
  monkey_config c;
  VLM_CHECK(monkey_config_load(&c, config));
  dataset d;
  VLM_CHECK(dataset_open(&d, path, &c));
  size_t img = (size_t)d.image_size * d.image_size * 3;
  int32_t *tok = malloc((size_t)(d.max_len + 1) * sizeof *tok);
  int32_t *lab = malloc((size_t)(d.max_len + 1) * sizeof *lab);
  uint8_t *px = malloc((size_t)(d.max_images + 1) * img);
  int rc = -1;
  long images = 0;
  if (!tok || !lab || !px) goto out;
  for (long i = 0; i < d.n_samples; i++) {
    int len, n_img;
    VLM_CHECK_GOTO(dataset_read_sample(&d, i, tok, lab, &len, px, &n_img), out);
    images += n_img;
  }
  printf("ok: %s: %ld samples, %ld tokens, %ld images (%ld read), max_len %ld, max_images %ld\n",
         path, d.n_samples, d.n_tokens, d.n_images, images, d.max_len, d.max_images);
  rc = 0;
out:
  free(tok);
  free(lab);
  free(px);
  dataset_close(&d);
  return rc;
}

static int synth(const char *config, const char *out, long n, unsigned long seed, int every) {
  monkey_config c;
  VLM_CHECK(monkey_config_load(&c, config));
  synth_options o;
  synth_options_default(&o);
  o.multi_image_every = every;
  VLM_CHECK(dataset_make_synthetic_ex(out, &c, n, seed, &o));
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 6 && argv[1][0] == 's')
    return synth(argv[2], argv[3], atol(argv[4]), strtoul(argv[5], NULL, 10),
                 argc > 6 ? atoi(argv[6]) : 0) == 0
               ? 0
               : 1;
  if (argc == 4 && argv[1][0] == 'c') return check(argv[2], argv[3]) == 0 ? 0 : 1;
  fprintf(stderr,
          "usage: dataset_tool synth CONFIG OUT N SEED [MULTI_IMAGE_EVERY]\n"
          "       dataset_tool check CONFIG PATH\n");
  return 2;
}
