/* tests/model/model_inputs.c: see model_inputs.h. */
#include "tests/model/model_inputs.h"

#include <stdio.h>

#include "common/vlm.h"
#include "io/weights.h"

int model_inputs_open(model_inputs *in, const char *model_dir, const char *data_h5,
                      const char *train_json) {
  char path[4096];
  snprintf(path, sizeof path, "%s/config.json", model_dir);
  VLM_CHECK(monkey_config_load(&in->c, path));
  VLM_CHECK(train_config_load(&in->t, train_json));
  VLM_CHECK(registry_build(&in->r, &in->c));
  VLM_CHECK(registry_select(&in->r, &in->t));
  VLM_CHECK(registry_alloc(&in->r));
  weights_load_stats ws;
  VLM_CHECK(weights_load_hf_dir(&in->r, model_dir, (unsigned long)in->t.seed, &ws));
  VLM_CHECK(dataset_open(&in->d, data_h5, &in->c));
  return 0;
}

void model_inputs_close(model_inputs *in) {
  dataset_close(&in->d);
  registry_free(&in->r);
  train_config_free(&in->t);
}
