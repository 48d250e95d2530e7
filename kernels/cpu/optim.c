/* kernels/cpu/optim.c: the optimizer step and its helpers on flat fp32 ranges.
 *
 * adamw_step             torch.optim.AdamW (decoupled decay, bias-corrected moments)
 *                        on the clipped gradient g * g_scale (clipping fused in);
 * sum_squares            sum of g^2 in double (global-norm clipping);
 * scale_inplace          x *= s;
 * lr_cosine_with_warmup  HF transformers' get_cosine_schedule_with_warmup multiplier.
 * Flat OpenMP loops; the per-step scalars are computed in double as torch computes
 * them in Python, then used in fp32 per element. */
#include "kernels/kernels.h"

#include <math.h>

#define VLM_PI 3.14159265358979323846

/* g' = g * g_scale; p -= lr*wd*p; m = b1*m + (1-b1)*g'; v = b2*v + (1-b2)*g'^2;
 * p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps) */
void adamw_step(float *p, const float *g, float *m, float *v, long n, float lr, float beta1,
                float beta2, float eps, float weight_decay, long t, float g_scale) {
  double bc1 = 1.0 - pow((double)beta1, (double)t);
  double bc2 = 1.0 - pow((double)beta2, (double)t);
  float decay = (float)(1.0 - (double)lr * (double)weight_decay);
  float step_size = (float)((double)lr / bc1);
  float inv_bc2_sqrt = (float)(1.0 / sqrt(bc2));
  float one_m_b1 = 1.0f - beta1, one_m_b2 = 1.0f - beta2;
#pragma omp parallel for simd schedule(static)
  for (long i = 0; i < n; i++) {
    float gi = g[i] * g_scale;
    float mi = beta1 * m[i] + one_m_b1 * gi;
    float vi = beta2 * v[i] + one_m_b2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    float denom = sqrtf(vi) * inv_bc2_sqrt + eps;
    p[i] = p[i] * decay - step_size * mi / denom;
  }
}

/* sum_i g[i]^2, accumulated in double */
double sum_squares(const float *g, long n) {
  double s = 0.0;
#pragma omp parallel for simd schedule(static) reduction(+ : s)
  for (long i = 0; i < n; i++) s += (double)g[i] * (double)g[i];
  return s;
}

/* x[n] *= s */
void scale_inplace(float *x, long n, float s) {
#pragma omp parallel for simd schedule(static)
  for (long i = 0; i < n; i++) x[i] *= s;
}

/* step < warmup: step / max(1, warmup); then
 * max(0, 0.5 * (1 + cos(pi * 2 * num_cycles * progress))),
 * progress = (step - warmup) / max(1, total - warmup). */
double lr_cosine_with_warmup(long step, long warmup, long total, double num_cycles) {
  if (step < warmup) return (double)step / (double)(warmup > 1 ? warmup : 1);
  long span = total - warmup;
  double progress = (double)(step - warmup) / (double)(span > 1 ? span : 1);
  double f = 0.5 * (1.0 + cos(VLM_PI * num_cycles * 2.0 * progress));
  return f > 0.0 ? f : 0.0;
}
