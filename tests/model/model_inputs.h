/* tests/model/model_inputs.h: what the model test programs load before they
 * build a model: the model directory's config and weights (registry with its
 * trainable split), the training config and the dataset. */
#ifndef VLM_TESTS_MODEL_INPUTS_H
#define VLM_TESTS_MODEL_INPUTS_H

#include "io/config.h"
#include "io/dataset.h"
#include "io/train_config.h"
#include "modules/registry.h"

typedef struct {
  monkey_config c;
  train_config t;
  registry r; /* built, selected by t, allocated, weights loaded */
  dataset d;
} model_inputs;

/* Loads MODEL_DIR/config.json, TRAIN.json, the weights of MODEL_DIR (LoRA tensors
 * it lacks initialised with the training config's seed) and DATA.h5. 0 or -1 (reported). */
int model_inputs_open(model_inputs *in, const char *model_dir, const char *data_h5,
                      const char *train_json);
void model_inputs_close(model_inputs *in);

#endif
