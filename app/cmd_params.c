/* app/cmd_params.c: `vlmtrain params CONFIG.json [--train TRAIN.json] [--list]`:
 * builds the parameter registry from a model config alone (no weights are
 * allocated, so the real 9.7 B model works on a laptop) and prints the counts
 * per part, the trainable split and the parameter groups. */
#include <stdio.h>

#include "app/commands.h"
#include "app/options.h"
#include "common/vlm.h"
#include "io/config.h"
#include "io/train_config.h"
#include "modules/registry.h"

int cmd_params(int argc, char **argv) {
  opt o[] = {
      {"--train", "TRAIN.json", "", "training config: trainable rules and parameter groups", 0, 0},
      {"--list", NULL, NULL, "also list every tensor: name, shape, trainable, group", 0, 0},
  };
  const char *pos[1];
  int n_pos = 0;
  int rc = opts_parse("params", "CONFIG.json [--train TRAIN.json] [--list]", o, 2, argc, argv, pos,
                      1, &n_pos);
  if (rc) return rc > 0 ? 0 : -1;
  if (n_pos != 1) VLM_FAIL("vlmtrain params: expected one model config file (see --help)");
  monkey_config c;
  VLM_CHECK(monkey_config_load(&c, pos[0]));
  train_config t;
  train_config_defaults(&t);
  if (o[0].value[0]) VLM_CHECK(train_config_load(&t, o[0].value));
  registry r;
  VLM_CHECK(registry_build(&r, &c));
  int ok = registry_select(&r, &t) == 0;
  if (ok) {
    registry_print_summary(&r, &c);
    if (o[1].value[0] == '1')
      for (int i = 0; i < r.n; i++) {
        const param_info *p = &r.p[i];
        char shape[64] = "";
        int n = 0;
        for (int d = 0; d < p->ndim; d++)
          n += snprintf(shape + n, sizeof shape - (size_t)n, "%s%ld", d ? "x" : "", p->shape[d]);
        printf("%-72s %-16s %12ld %s %s\n", p->name, shape, p->numel,
               p->trainable ? "trainable" : "frozen", p->group >= 0 ? r.groups[p->group].name : "-");
      }
  }
  registry_free(&r);
  train_config_free(&t);
  if (!ok) VLM_FAIL("vlmtrain params: the training config does not apply to this model");
  return 0;
}
