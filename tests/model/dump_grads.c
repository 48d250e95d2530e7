/* tests/model/dump_grads.c: test tool for the PyTorch comparison. Loads a
 * model directory, takes the first B samples of a dataset in file order (B =
 * train_micro_batch_size_per_gpu of the training config), runs forward and
 * backward of that one micro-batch, and writes OUT.h5 with /loss (float64, the
 * micro-batch mean loss), /n_targets (int64) and /grads/<name> (float32, the
 * parameter's shape) for every trainable parameter.
 * usage: dump_grads MODEL_DIR DATA.h5 TRAIN.json OUT.h5 */
#include <hdf5.h>
#include <mpi.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/vlm.h"
#include "modules/model.h"
#include "modules/zero.h"
#include "tests/model/model_inputs.h"

static int write_scalar(hid_t f, const char *name, hid_t type, const void *v) {
  hid_t sp = H5Screate(H5S_SCALAR);
  hid_t ds = H5Dcreate2(f, name, type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  herr_t e = ds < 0 ? -1 : H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
  if (ds >= 0) H5Dclose(ds);
  H5Sclose(sp);
  return e < 0 ? -1 : 0;
}

static int run(int argc, char **argv) {
  if (argc != 5) VLM_FAIL("usage: dump_grads MODEL_DIR DATA.h5 TRAIN.json OUT.h5");
  model_inputs in;
  VLM_CHECK(model_inputs_open(&in, argv[1], argv[2], argv[3]));
  const train_config *t = &in.t;
  registry *r = &in.r;
  dataset *d = &in.d;
  const int B = t->micro_batch;
  if (B > d->n_samples) VLM_FAIL("dataset has %ld samples, micro-batch is %d", d->n_samples, B);
  const size_t img = (size_t)d->image_size * d->image_size * 3;
  int32_t *tok = malloc((size_t)B * d->max_len * sizeof *tok);
  int32_t *lab = malloc((size_t)B * d->max_len * sizeof *lab);
  uint8_t *pix = malloc((size_t)(B * d->max_images + 1) * img);
  int *len = malloc((size_t)B * sizeof *len), *nimg = malloc((size_t)B * sizeof *nimg);
  long t_off = 0, i_off = 0;
  for (int j = 0; j < B; j++) {
    VLM_CHECK(dataset_read_sample(d, j, tok + t_off, lab + t_off, &len[j], pix + i_off * img, &nimg[j]));
    t_off += len[j];
    i_off += nimg[j];
  }
  vlm_comms comms;
  VLM_CHECK(comms_init(&comms, MPI_COMM_SELF, 1));
  zero_state z;
  VLM_CHECK(zero_init(&z, &comms, r, t->persistence_threshold, t->max_live_parameters, 0));
  model m;
  VLM_CHECK(model_create(&m, vlm_backend_cpu(), &in.c, &z, B, (int)t_off, (int)(i_off > 0 ? i_off : 1), t->recompute_vit,
                         t->recompute_llm));
  mb_batch b = {.n_samples = B, .len = len, .n_img = nimg, .tokens = tok, .labels = lab, .pixels = pix};
  long want = mb_count_targets(&b), n_tgt = 0;
  double loss = 0;
  VLM_CHECK(model_forward_backward(&m, &b, want > 0 ? 1.0f / (float)want : 0.0f, &loss, &n_tgt));
  if (n_tgt > 0) loss /= (double)n_tgt;
  hid_t f = H5Fcreate(argv[4], H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (f < 0) VLM_FAIL("cannot create %s", argv[4]);
  VLM_CHECK(write_scalar(f, "/loss", H5T_NATIVE_DOUBLE, &loss));
  long long nt = n_tgt;
  VLM_CHECK(write_scalar(f, "/n_targets", H5T_NATIVE_LLONG, &nt));
  hid_t g = H5Gcreate2(f, "/grads", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  for (int i = 0; i < r->n; i++) {
    const param_info *p = &r->p[i];
    if (!p->trainable) continue;
    hsize_t dims[4];
    for (int k = 0; k < p->ndim; k++) dims[k] = (hsize_t)p->shape[k];
    hid_t sp = H5Screate_simple(p->ndim, dims, NULL);
    hid_t ds = H5Dcreate2(g, p->name, H5T_NATIVE_FLOAT, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    long lo, hi;
    const float *grad = zero_local_grad_range(&z, z.grads, i, &lo, &hi);
    if (ds < 0 || H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, grad) < 0)
      VLM_FAIL("cannot write /grads/%s", p->name);
    H5Dclose(ds);
    H5Sclose(sp);
  }
  H5Gclose(g);
  H5Fclose(f);
  printf("dump_grads: loss %.9g over %ld targets, %ld trainable elements, %.3f GFLOP\n", loss, n_tgt,
         r->n_trainable, m.flops * 1e-9);
  model_free(&m);
  zero_free(&z);
  comms_free(&comms);
  model_inputs_close(&in);
  free(tok);
  free(lab);
  free(pix);
  free(len);
  free(nimg);
  return 0;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  omp_set_max_active_levels(1);
  int rc = run(argc, argv);
  MPI_Finalize();
  return rc == 0 ? 0 : 1;
}
