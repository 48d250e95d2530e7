/* app/cmd_init.c: `vlmtrain init --config CONFIG.json --out DIR [--seed N]`:
 * a randomly initialised model directory in the HF layout (config.json +
 * model.safetensors, fp32) for any Monkey-format config. */
#include <stdio.h>

#include "app/commands.h"
#include "app/options.h"
#include "common/vlm.h"
#include "io/config.h"
#include "io/weights.h"
#include "modules/registry.h"

int cmd_init(int argc, char **argv) {
  opt o[] = {
      {"--config", "CONFIG.json", NULL, "Monkey-format model config", 0, 0},
      {"--out", "DIR", NULL, "output model directory (created)", 0, 0},
      {"--seed", "N", "0", "random seed of the initialisation", 0, 0},
  };
  int rc = opts_parse("init", "--config CONFIG.json --out DIR [--seed N]", o, 3, argc, argv, NULL, 0,
                      NULL);
  if (rc) return rc > 0 ? 0 : -1;
  if (vlm_rank() != 0) return 0;
  long seed;
  VLM_CHECK(opt_long(&o[2], &seed));
  monkey_config c;
  VLM_CHECK(monkey_config_load(&c, o[0].value));
  registry r;
  VLM_CHECK(registry_build(&r, &c));
  if (registry_alloc(&r) != 0) {
    long n = r.n_params;
    registry_free(&r);
    VLM_FAIL("vlmtrain init: %s has %ld parameters (%.1f GiB in fp32): too large for this machine",
             o[0].value, n, n * 4.0 / 1073741824.0);
  }
  registry_init_random(&r, &c, (unsigned long)seed);
  int ok = weights_save_hf_dir(&r, o[1].value, o[0].value) == 0;
  if (ok) vlm_log("init: %ld parameters in %d tensors -> %s/model.safetensors (seed %ld)\n", r.n_params, r.n, o[1].value, seed);
  registry_free(&r);
  if (!ok) VLM_FAIL("vlmtrain init: could not write %s", o[1].value);
  return 0;
}
