/* app/cmd_import.c: `vlmtrain import --from HF_DIR --out MODEL.h5 [--seed N]`:
 * a HF safetensors model directory (config.json + model.safetensors or index +
 * shards; F32, BF16 or F16) to one vlmtrain model file (io/model_h5.h,
 * docs/formats.md). Under mpirun every rank converts and writes its share of
 * each tensor collectively. */
#include <stdio.h>

#include <mpi.h>

#include "app/commands.h"
#include "app/options.h"
#include "common/vlm.h"
#include "io/model_h5.h"

int cmd_import(int argc, char **argv) {
  opt o[] = {
      {"--from", "HF_DIR", NULL, "HF model directory: config.json + model.safetensors or index + shards", 0, 0},
      {"--out", "MODEL.h5", NULL, "model file to write (written as MODEL.h5.tmp, renamed when complete)", 0, 0},
      {"--seed", "N", "42", "seed of LoRA tensors absent from HF_DIR (as train's \"seed\")", 0, 0},
  };
  int rc = opts_parse("import", "--from HF_DIR --out MODEL.h5 [--seed N]", o, 3, argc, argv, NULL, 0,
                      NULL);
  if (rc) return rc > 0 ? 0 : -1;
  long seed;
  VLM_CHECK(opt_long(&o[2], &seed));
  if (seed < 0) VLM_FAIL("option --seed: expected a non-negative integer, found %ld", seed);
  if (model_h5_import(o[0].value, o[1].value, (unsigned long)seed, MPI_COMM_WORLD) != 0) {
    if (vlm_rank() == 0) VLM_FAIL("vlmtrain import: %s was not written", o[1].value);
    return -1; /* every rank fails; rank 0 says so */
  }
  return 0;
}
