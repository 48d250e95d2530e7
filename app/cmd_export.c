/* app/cmd_export.c: `vlmtrain export --from FILE.h5 --out DIR [--dtype fp32|bf16]
 * [--shard-size-mb N] [--trained-only --train TRAIN.json]`: a vlmtrain model or
 * checkpoint file back to a HF directory (config.json + safetensors, sharded
 * with an index when larger than one shard), or only the tensors a training
 * config trains (DIR/trained.safetensors). Under mpirun every rank reads,
 * converts and writes its share of each tensor. */
#include <stdio.h>
#include <string.h>

#include <mpi.h>

#include "app/commands.h"
#include "app/options.h"
#include "common/vlm.h"
#include "io/model_h5.h"

int cmd_export(int argc, char **argv) {
  opt o[] = {
      {"--from", "FILE.h5", NULL, "vlmtrain model or checkpoint file", 0, 0},
      {"--out", "DIR", NULL, "new HF directory (must not exist or be empty)", 0, 0},
      {"--dtype", "fp32|bf16", "fp32", "element type of the safetensors files", 0, 0},
      {"--shard-size-mb", "N", "5000", "largest shard in MiB of tensor data; more -> index + shards", 0, 0},
      {"--trained-only", NULL, NULL, "write only the tensors --train trains, as DIR/trained.safetensors", 0, 0},
      {"--train", "TRAIN.json", "", "training config whose trainable selection --trained-only uses", 0, 0},
  };
  int rc = opts_parse("export",
                      "--from FILE.h5 --out DIR [--dtype fp32|bf16] [--shard-size-mb N] "
                      "[--trained-only --train TRAIN.json]",
                      o, 6, argc, argv, NULL, 0, NULL);
  if (rc) return rc > 0 ? 0 : -1;
  model_h5_export_opts eo = {.dtype = ST_F32};
  if (strcmp(o[2].value, "bf16") == 0) eo.dtype = ST_BF16;
  else if (strcmp(o[2].value, "fp32") != 0)
    VLM_FAIL("option --dtype: expected fp32 or bf16, found \"%s\"", o[2].value);
  long mb;
  VLM_CHECK(opt_long(&o[3], &mb));
  if (mb < 1 || mb > (1L << 30))
    VLM_FAIL("option --shard-size-mb: expected a positive number of MiB, found %ld", mb);
  eo.shard_bytes = mb << 20;
  const int trained_only = o[4].value[0] == '1';
  if (trained_only && !o[5].value[0])
    VLM_FAIL("option --trained-only needs --train TRAIN.json (the training config that says what is trained)");
  if (!trained_only && o[5].value[0])
    VLM_FAIL("option --train is used only with --trained-only");
  if (trained_only && o[3].given)
    VLM_FAIL("option --shard-size-mb does not apply to --trained-only (one file)");
  eo.train_json = trained_only ? o[5].value : NULL;
  if (model_h5_export(o[0].value, o[1].value, &eo, MPI_COMM_WORLD) != 0) {
    if (vlm_rank() == 0) VLM_FAIL("vlmtrain export: %s was not written", o[1].value);
    return -1; /* every rank fails; rank 0 says so */
  }
  return 0;
}
