/* tests/mkdata_json/image_tool.c: io/image.c as a small command, so the Python
 * test can compare its decoding and resizing with PIL's on many files:
 *   image_tool IMAGE SIZE OUT.raw [MAX_PIXELS]
 * decodes IMAGE to RGB and, when SIZE > 0, resizes it to SIZE x SIZE (SIZE 0:
 * keep the decoded size); writes the bytes (height x width x 3) to OUT.raw and
 * prints "ok WIDTH HEIGHT" (the written size). A refused image prints
 * "skip STATUS: REASON" and exits 3. Not installed. */
#include <stdio.h>
#include <stdlib.h>

#include "io/image.h"

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: image_tool IMAGE SIZE OUT.raw [MAX_PIXELS]\n");
    return 2;
  }
  int size = atoi(argv[2]);
  long long max_px = argc > 4 ? atoll(argv[4]) : 100000000LL;
  image_rgb im;
  char why[512];
  int st = image_decode_file(argv[1], max_px, &im, why, sizeof why);
  if (st != IMG_OK) {
    printf("skip %s: %s\n", image_status_name(st), why);
    return 3;
  }
  int w = im.width, h = im.height;
  uint8_t *out = im.rgb;
  if (size > 0) {
    out = malloc((size_t)size * size * 3);
    if (!out || image_resize_bicubic(im.rgb, im.width, im.height, 3, out, size, size) != 0) {
      fprintf(stderr, "image_tool: out of memory\n");
      return 1;
    }
    w = h = size;
  }
  FILE *f = fopen(argv[3], "wb");
  if (!f || fwrite(out, 1, (size_t)w * h * 3, f) != (size_t)w * h * 3 || fclose(f) != 0) {
    fprintf(stderr, "image_tool: cannot write %s\n", argv[3]);
    return 1;
  }
  printf("ok %d %d\n", w, h);
  if (out != im.rgb) free(out);
  image_rgb_free(&im);
  return 0;
}
