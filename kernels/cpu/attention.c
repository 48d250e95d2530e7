/* kernels/cpu/attention.c: multi-head scaled dot-product attention (forward and
 * backward) for one sequence on the CPU, with OpenMP.
 *
 * Memory is linear in the sequence length: queries are taken in blocks of
 * ATTN_BQ (128) rows, and each thread holds only its block's ATTN_BQ x Tk
 * scores (and, in the backward, as many dP/dS).
 * The forward saves lse[h, t] (log-sum-exp of the scaled scores); the backward
 * recomputes the probabilities from it (FlashAttention-2 style):
 *   D_i = sum_d dO_i * O_i,  P = exp(scale * q k^T - lse),  dV += P^T dO,
 *   dP = dO V^T,  dS = P * (dP - D),  dQ += scale * dS K,  dK += scale * dS^T Q.
 * Every matrix product is one attn_gemm (attn_gemm.h: register tiles, no
 * packing) on a head's rows, read in place through the row stride (ld) and head
 * stride (hs) of the shape; the two products against k^T and v^T read K and V
 * transposed per head, in panels of AG_NR keys (Kt, Vt; see transpose_heads),
 * laid out once per call by all threads. Causal: a block's products stop at its
 * last query row's position, and inside it attn_gemm skips the tiles the mask
 * zeroes, so keys above the diagonal are (up to a tile's edge) never touched.
 * Causal with Tq < Tk: the queries are the last Tq positions (a sequence's tail,
 * all keys present).
 *
 * Threads: the forward runs (query block, head) pairs in parallel. The backward
 * runs (head, group) pairs, a group being every G-th query block of a head;
 * group 0 adds straight into dk/dv, groups 1..G-1 into partial buffers taken
 * from the scratch that are added in afterwards, in a fixed order (G > 1 only
 * when the heads do not share out evenly over the threads; see bwd_groups).
 * For a given thread count the results are deterministic. Inside an enclosing
 * parallel region everything runs on the calling thread.
 *
 * Not here: dropout, attention masks other than causal, grouped-query heads. */
#include "kernels/kernels.h"

#include "kernels/cpu/attn_gemm.h"
#include "kernels/cpu/cpu_math.h"

#include <math.h>
#include <omp.h>
#include <string.h>

/* Query rows per block: 128 rows made bench_attention 5-13% faster than 64
 * (larger products), for 1 MiB of scratch per thread at Tk = 1024. The tests place
 * cases at 4 x 128 and 128 + 1 rows (BLOCK in gen_attention_cases.py). */
#define ATTN_BQ 128
/* Floats per thread slice are rounded up to this (64 bytes) to keep slices aligned. */
#define ATTN_ALIGN 16

/* ---- layout of the scratch ---------------------------------------------- */

static size_t round_up(size_t n) { return (n + ATTN_ALIGN - 1) / ATTN_ALIGN * ATTN_ALIGN; }

static int n_qblocks(const attn_shape *s) { return (s->Tq + ATTN_BQ - 1) / ATTN_BQ; }

/* Row stride of the score blocks and of Kt, Vt: Tk rounded up to whole column
 * tiles of attn_gemm. */
static int key_stride(const attn_shape *s) { return (s->Tk + AG_NR - 1) / AG_NR * AG_NR; }

/* Per thread: the scores/probabilities block, the dP/dS block and D_i. */
static size_t per_thread_floats(const attn_shape *s) {
  size_t bq = (size_t)(s->Tq < ATTN_BQ ? s->Tq : ATTN_BQ);
  return round_up(2 * bq * (size_t)key_stride(s) + bq);
}

/* K or V of every head, transposed (H * D * key_stride floats, in panels: see
 * transpose_heads). */
static size_t transposed_floats(const attn_shape *s) {
  return round_up((size_t)s->H * s->D * (size_t)key_stride(s));
}

/* Causal: query row i is at key position i + Tk - Tq (the queries are the last
 * Tq of the Tk positions) and sees the keys up to that position. */
static int causal_offset(const attn_shape *s) { return s->Tk - s->Tq; }

/* Number of keys query block [i0, i0+bq) looks at. */
static int keys_of_block(const attn_shape *s, int i0, int bq) {
  const int last = i0 + bq + causal_offset(s);
  return s->causal && last < s->Tk ? last : s->Tk;
}

/* Work of query block b, in units of score entries. */
static double block_cost(const attn_shape *s, int b) {
  const int i0 = b * ATTN_BQ, bq = s->Tq - i0 < ATTN_BQ ? s->Tq - i0 : ATTN_BQ;
  return (double)bq * keys_of_block(s, i0, bq);
}

/* The most threads the load-balance model below follows; beyond it the choice
 * is made as if there were this many. */
#define ATTN_MODEL_THREADS 256

/* Time at which the backward's work items, (head h, group g) in the order
 * w = h*G + g, would finish on nt threads if each item went to the thread that
 * frees up first (what schedule(dynamic, 1) does). load is a min-heap of nt
 * thread finishing times. */
static double bwd_makespan(const attn_shape *s, int nqb, int G, int nt, double *load) {
  double gcost[ATTN_MODEL_THREADS];
  for (int g = 0; g < G; g++) {
    gcost[g] = 0.0;
    for (int b = g; b < nqb; b += G) gcost[g] += block_cost(s, b);
  }
  for (int t = 0; t < nt; t++) load[t] = 0.0;
  double end = 0.0;
  for (int h = 0; h < s->H; h++)
    for (int g = 0; g < G; g++) {
      double x = load[0] + gcost[g]; /* the earliest free thread takes the item */
      if (x > end) end = x;
      int i = 0; /* sift x down from the root */
      for (;;) {
        int c = 2 * i + 1;
        if (c >= nt) break;
        if (c + 1 < nt && load[c + 1] < load[c]) c++;
        if (load[c] >= x) break;
        load[i] = load[c];
        i = c;
      }
      load[i] = x;
    }
  return end;
}

/* Query-block groups per head in the backward (G): group g of a head takes
 * blocks g, g+G, g+2G, ... Groups beyond the first cost a partial dK/dV each
 * (memory, and a reduction at the end), so G > 1 is taken only when the load
 * model above says it finishes at least 5% sooner: when the heads do not
 * share out evenly over the threads (H < nt, or H not a multiple of nt). */
static int bwd_groups(const attn_shape *s, int nthreads) {
  const int nqb = n_qblocks(s);
  const int nt = nthreads < ATTN_MODEL_THREADS ? nthreads : ATTN_MODEL_THREADS;
  if (nt <= 1 || nqb <= 1 || s->H % nt == 0) return 1;
  int gmax = (4 * nt + s->H - 1) / s->H;
  if (gmax > nqb) gmax = nqb;
  if (gmax > ATTN_MODEL_THREADS) gmax = ATTN_MODEL_THREADS; /* gcost[] holds that many */
  double load[ATTN_MODEL_THREADS];
  int best = 1;
  double best_t = bwd_makespan(s, nqb, 1, nt, load);
  for (int G = 2; G <= gmax; G++) {
    double t = bwd_makespan(s, nqb, G, nt, load);
    if (t < 0.95 * best_t) best = G, best_t = t;
  }
  return best;
}

/* One partial dK and one partial dV (Tk x D each) per (head, group >= 1). */
static size_t partial_floats(const attn_shape *s) { return round_up(2 * (size_t)s->Tk * s->D); }

/* The scratch: Kt, Vt (transposed_floats each), the threads' slices, then the
 * backward's partial dK/dV. */
size_t attention_scratch_floats(const attn_shape *s, int nthreads) {
  if (nthreads < 1) nthreads = 1;
  size_t G = (size_t)bwd_groups(s, nthreads);
  return 2 * transposed_floats(s) + (size_t)nthreads * per_thread_floats(s) +
         (size_t)s->H * (G - 1) * partial_floats(s);
}

/* Threads a kernel will run on: 1 inside an enclosing parallel region. */
static int team_size(void) { return omp_in_parallel() ? 1 : omp_get_max_threads(); }

/* ---- transposed K and V ---------------------------------------------------- */

/* Keys per work item of transpose_heads (a multiple of AG_NR). */
#define ATTN_TBLOCK 64

/* Head h's x transposed, in panels of AG_NR keys (attn_gemm's column tiles),
 * each panel's D rows contiguous: element (d, j) of xt_h is
 *   xt[h*D*ks + (j / AG_NR)*D*AG_NR + d*AG_NR + j % AG_NR] = x[j*ld + h*hs + d]
 * for j < Tk, and 0 for Tk <= j < ks. The products read a panel at unit stride
 * (a row-major D x ks layout would put a panel's rows ks floats apart, in the
 * same few cache sets). Shared out over the enclosing team (an omp for with its
 * barrier: every thread sees all of xt afterwards). */
static void transpose_heads(float *xt, const float *x, int ld, int hs, const attn_shape *s) {
  const int D = s->D, ks = key_stride(s), nb = (ks + ATTN_TBLOCK - 1) / ATTN_TBLOCK;
  const long nwork = (long)s->H * nb;
#pragma omp for schedule(static)
  for (long w = 0; w < nwork; w++) {
    const int h = (int)(w / nb), j0 = (int)(w % nb) * ATTN_TBLOCK;
    const int j1 = j0 + ATTN_TBLOCK < ks ? j0 + ATTN_TBLOCK : ks;
    for (int p0 = j0; p0 < j1; p0 += AG_NR) { /* one panel: D rows of AG_NR keys */
      float *panel = xt + (size_t)h * D * ks + (size_t)(p0 / AG_NR) * D * AG_NR;
      const float *src = x + (size_t)p0 * ld + (size_t)h * hs;
      const int nj = s->Tk - p0 < AG_NR ? s->Tk - p0 : AG_NR; /* keys that exist */
      for (int d = 0; d < D; d++) {
        float *dst = panel + (size_t)d * AG_NR;
        for (int j = 0; j < nj; j++) dst[j] = src[(size_t)j * ld + d];
        for (int j = nj < 0 ? 0 : nj; j < AG_NR; j++) dst[j] = 0.0f;
      }
    }
  }
}

/* ---- one query block ------------------------------------------------------ */

/* Masks for the products of a block, and the offset that goes with them: row r
 * of the block is at position i0 + r + causal_offset and sees keys up to it. */
static ag_mask mask_or_all(const attn_shape *s, ag_mask m) { return s->causal ? m : AG_ALL; }
static int block_delta(const attn_shape *s, int i0) { return i0 + causal_offset(s); }

/* S[bq, ks] = scale * q[i0.., h] @ k[0..nk, h]^T (columns up to nk rounded up to
 * a tile; under causal masking only up to each row's position, to a tile) */
static void block_scores(float *S, const float *q, const float *kt, const attn_shape *s, int h,
                         int i0, int bq, int nk) {
  const int ks = key_stride(s);
  attn_gemm(bq, nk, s->D, s->scale, q + (size_t)i0 * s->ldq + (size_t)h * s->hsq, s->ldq, 1,
            kt + (size_t)h * s->D * ks, AG_NR, (long)s->D * AG_NR, 0, S, ks, 1,
            mask_or_all(s, AG_COLS_UPTO_ROW), block_delta(s, i0));
}

/* Keys query row i (absolute) sees among the block's nk. */
static inline int keys_of_row(const attn_shape *s, int i, int nk) {
  const int seen = i + 1 + causal_offset(s);
  return s->causal && seen < nk ? seen : nk;
}

/* ---- forward ---------------------------------------------------------------- */

void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                       const attn_shape *s, float *scratch) {
  const int H = s->H, D = s->D, Tq = s->Tq;
  const int nqb = n_qblocks(s), ks = key_stride(s);
  const long nwork = (long)nqb * H;
  const size_t ldo = (size_t)H * D;
  const size_t slice = per_thread_floats(s);
  float *kt = scratch;
  float *slices = scratch + 2 * transposed_floats(s);

#pragma omp parallel num_threads(team_size())
  {
    float *S = slices + (size_t)omp_get_thread_num() * slice;
    transpose_heads(kt, k, s->ldk, s->hsk, s);
    /* Last query blocks first: under causal masking they are the largest. */
#pragma omp for schedule(dynamic, 1)
    for (long w = 0; w < nwork; w++) {
      const int b = nqb - 1 - (int)(w / H), h = (int)(w % H);
      const int i0 = b * ATTN_BQ;
      const int bq = Tq - i0 < ATTN_BQ ? Tq - i0 : ATTN_BQ;
      const int nk = keys_of_block(s, i0, bq);
      block_scores(S, q, kt, s, h, i0, bq, nk);
      for (int r = 0; r < bq; r++) {
        float *row = S + (size_t)r * ks;
        const int nv = keys_of_row(s, i0 + r, nk);
        float m = row[0];
#pragma omp simd reduction(max : m)
        for (int j = 0; j < nv; j++) m = row[j] > m ? row[j] : m;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < nv; j++) {
          float e = vlm_expf(row[j] - m);
          row[j] = e;
          sum += e;
        }
        const float inv = 1.0f / sum;
#pragma omp simd
        for (int j = 0; j < nv; j++) row[j] *= inv;
        for (int j = nv; j < nk; j++) row[j] = 0.0f;
        lse[(size_t)h * Tq + i0 + r] = m + logf(sum);
      }
      /* out[i0.., h] = P @ v[0..nk, h] */
      attn_gemm(bq, D, nk, 1.0f, S, ks, 1, v + (size_t)h * s->hsv, s->ldv, AG_NR, 0,
                out + (size_t)i0 * ldo + (size_t)h * D, (long)ldo, 0,
                mask_or_all(s, AG_K_UPTO_ROW), block_delta(s, i0));
    }
  }
}

/* ---- backward --------------------------------------------------------------- */

/* Where one backward work item adds its dK or dV: the gradient itself, or a
 * partial buffer with row stride D. */
typedef struct {
  float *p;
  int ld;
} grad_target;

void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out,
                        const float *lse, const float *q, const float *k, const float *v,
                        const attn_shape *s, float *scratch) {
  if (!dq && !dk && !dv) return;
  const int H = s->H, D = s->D, Tq = s->Tq, Tk = s->Tk;
  const int nqb = n_qblocks(s), ks = key_stride(s);
  const int nt = team_size();
  const int G = bwd_groups(s, nt);
  const long nwork = (long)H * G;
  const size_t ldo = (size_t)H * D;
  const size_t slice = per_thread_floats(s);
  const size_t bq_max = (size_t)(Tq < ATTN_BQ ? Tq : ATTN_BQ);
  float *kt = scratch, *vt = scratch + transposed_floats(s);
  float *slices = scratch + 2 * transposed_floats(s);
  float *partials = slices + (size_t)nt * slice; /* [H][G-1][dK | dV] */
  const size_t pf = partial_floats(s);
  const int need_dp = dq != NULL || dk != NULL;

#pragma omp parallel num_threads(nt)
  {
    float *P = slices + (size_t)omp_get_thread_num() * slice;
    float *dS = P + bq_max * (size_t)ks;
    float *Di = dS + bq_max * (size_t)ks;
    transpose_heads(kt, k, s->ldk, s->hsk, s);
    if (need_dp) transpose_heads(vt, v, s->ldv, s->hsv, s);
#pragma omp for schedule(dynamic, 1)
    for (long w = 0; w < nwork; w++) {
      const int h = (int)(w / G), g = (int)(w % G);
      grad_target tk = {NULL, 0}, tv = {NULL, 0};
      if (g == 0) {
        if (dk) tk = (grad_target){dk + (size_t)h * s->hsk, s->ldk};
        if (dv) tv = (grad_target){dv + (size_t)h * s->hsv, s->ldv};
      } else {
        float *part = partials + ((size_t)h * (G - 1) + (g - 1)) * pf;
        if (dk) {
          tk = (grad_target){part, D};
          memset(part, 0, (size_t)Tk * D * sizeof(float));
        }
        if (dv) {
          tv = (grad_target){part + (size_t)Tk * D, D};
          memset(tv.p, 0, (size_t)Tk * D * sizeof(float));
        }
      }
      for (int b = g; b < nqb; b += G) {
        const int i0 = b * ATTN_BQ;
        const int bq = Tq - i0 < ATTN_BQ ? Tq - i0 : ATTN_BQ;
        const int nk = keys_of_block(s, i0, bq);
        const float *qb = q + (size_t)i0 * s->ldq + (size_t)h * s->hsq;
        const float *dob = dout + (size_t)i0 * ldo + (size_t)h * D;
        const float *ob = out + (size_t)i0 * ldo + (size_t)h * D;
        const int delta = block_delta(s, i0);
        /* P = exp(scale q k^T - lse), zero above the diagonal */
        block_scores(P, q, kt, s, h, i0, bq, nk);
        for (int r = 0; r < bq; r++) {
          float *row = P + (size_t)r * ks;
          const int nv = keys_of_row(s, i0 + r, nk);
          const float l = lse[(size_t)h * Tq + i0 + r];
#pragma omp simd
          for (int j = 0; j < nv; j++) row[j] = vlm_expf(row[j] - l);
          for (int j = nv; j < nk; j++) row[j] = 0.0f;
        }
        /* dV[0..nk] += P^T dO */
        if (tv.p)
          attn_gemm(nk, D, bq, 1.0f, P, 1, ks, dob, (long)ldo, AG_NR, 1, tv.p, tv.ld, 0,
                    mask_or_all(s, AG_K_FROM_ROW), delta);
        if (!need_dp) continue;
        /* D_i = dO_i . O_i */
        for (int r = 0; r < bq; r++) {
          const float *a = dob + (size_t)r * ldo, *o = ob + (size_t)r * ldo;
          float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
          for (int d = 0; d < D; d++) acc += a[d] * o[d];
          Di[r] = acc;
        }
        /* dP = dO V^T, then dS = P * (dP - D) in place (0 above the diagonal,
         * where attn_gemm may have left dP unwritten) */
        attn_gemm(bq, nk, D, 1.0f, dob, (long)ldo, 1, vt + (size_t)h * D * ks, AG_NR,
                  (long)D * AG_NR, 0, dS, ks, 1, mask_or_all(s, AG_COLS_UPTO_ROW), delta);
        for (int r = 0; r < bq; r++) {
          float *ds = dS + (size_t)r * ks;
          const float *p = P + (size_t)r * ks;
          const float di = Di[r];
          const int nv = keys_of_row(s, i0 + r, nk);
#pragma omp simd
          for (int j = 0; j < nv; j++) ds[j] = p[j] * (ds[j] - di);
          for (int j = nv; j < nk; j++) ds[j] = 0.0f;
        }
        /* dQ[i0..] += scale dS K;  dK[0..nk] += scale dS^T Q */
        if (dq)
          attn_gemm(bq, D, nk, s->scale, dS, ks, 1, k + (size_t)h * s->hsk, s->ldk, AG_NR, 1,
                    dq + (size_t)i0 * s->ldq + (size_t)h * s->hsq, s->ldq, 0,
                    mask_or_all(s, AG_K_UPTO_ROW), delta);
        if (tk.p)
          attn_gemm(nk, D, bq, s->scale, dS, 1, ks, qb, s->ldq, AG_NR, 1, tk.p, tk.ld, 0,
                    mask_or_all(s, AG_K_FROM_ROW), delta);
      }
    }

    /* Add the partial dK/dV of groups 1..G-1 (rows past a group's last key
     * block are zero from the memset). */
    if (G > 1 && (dk || dv)) {
#pragma omp for collapse(2) schedule(static)
      for (int h = 0; h < H; h++)
        for (int t = 0; t < Tk; t++) {
          for (int g = 1; g < G; g++) {
            const float *part = partials + ((size_t)h * (G - 1) + (g - 1)) * pf;
            if (dk) {
              float *dst = dk + (size_t)t * s->ldk + (size_t)h * s->hsk;
              const float *src = part + (size_t)t * D;
#pragma omp simd
              for (int d = 0; d < D; d++) dst[d] += src[d];
            }
            if (dv) {
              float *dst = dv + (size_t)t * s->ldv + (size_t)h * s->hsv;
              const float *src = part + (size_t)Tk * D + (size_t)t * D;
#pragma omp simd
              for (int d = 0; d < D; d++) dst[d] += src[d];
            }
          }
        }
    }
  }
}
