/* kernels/cpu/loss.c: softmax cross-entropy over vocabulary rows, loss and gradient
 * together (one exp per logit).
 *
 * logits[N,V], targets[N]. Row loss = logsumexp(row) - row[target] (max-subtracted).
 * Rows whose target is -100 are ignored: no loss, gradient 0. So that a bad label can
 * never index out of bounds, every target outside [0,V) is treated the same way.
 * Returns the SUM of the row losses in double and the count of valid rows. dlogits
 * (may alias logits, may be NULL) is WRITTEN, not accumulated:
 * (softmax - onehot) * grad_scale. Row-parallel. */
#include "kernels/kernels.h"

#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_math.h"

double cross_entropy_forward_backward(float *dlogits, const float *logits, const int *targets,
                                      int N, int V, float grad_scale, int *n_valid) {
  double total = 0.0;
  int valid = 0;
#pragma omp parallel for schedule(static) reduction(+ : total, valid)
  for (int n = 0; n < N; n++) {
    const float *x = logits + (size_t)n * V;
    int tgt = targets[n];
    if (tgt < 0 || tgt >= V) {
      if (dlogits) memset(dlogits + (size_t)n * V, 0, (size_t)V * sizeof(float));
      continue;
    }
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int v = 0; v < V; v++) mx = x[v] > mx ? x[v] : mx;
    float xt = x[tgt]; /* read before dlogits (which may alias logits) is written */
    float s = 0.0f;
    if (dlogits) {
      /* one exp per element: store exp(x - max), then scale it in place */
      float *d = dlogits + (size_t)n * V;
#pragma omp simd reduction(+ : s)
      for (int v = 0; v < V; v++) {
        float e = vlm_expf(x[v] - mx);
        d[v] = e;
        s += e;
      }
      float k = grad_scale / s;
      for (int v = 0; v < V; v++) d[v] *= k;
      d[tgt] -= grad_scale;
    } else {
#pragma omp simd reduction(+ : s)
      for (int v = 0; v < V; v++) s += vlm_expf(x[v] - mx);
    }
    total += (double)mx + log((double)s) - (double)xt;
    valid += 1;
  }
  if (n_valid) *n_valid = valid;
  return total;
}
