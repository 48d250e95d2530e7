/* kernels/cpu/attn_gemm.c: register-tiled small matrix products for the CPU
 * attention kernel (see attn_gemm.h for the contract).
 *
 * C is computed in tiles of MR rows x AG_NR columns held in vector registers:
 * per inner index k, the tile loads one row of B (AG_NR floats), broadcasts one
 * element of A per row and does MR x AG_NR multiply-adds. B is read in place
 * (its rows are contiguous), A through two strides, so a transposed A costs
 * nothing. With AVX-512 a tile is 8 x 32 (16 zmm accumulators); otherwise
 * 3 x 32 (12 accumulators in 8-float vectors). Columns past the last whole tile
 * (when the caller has not padded) go in tiles of 16 and 8, then one at a time.
 * The tile routines are written once over the vector type and the tile width,
 * and instantiated per row count through SWITCH_MR so that every loop bound is a
 * constant the compiler unrolls. Summation is in k order for every entry:
 * results do not depend on the thread count. */
#include "kernels/cpu/attn_gemm.h"

#if defined(__AVX512F__)
#define VW 16 /* floats per vector */
#define MR 8  /* rows per tile */
#else
#define VW 8
#define MR 3
#endif

/* aligned(4): loads and stores of these types need only float alignment. */
typedef float vec_t __attribute__((vector_size(VW * sizeof(float)), aligned(4)));
typedef float vec8_t __attribute__((vector_size(8 * sizeof(float)), aligned(4)));

#define INLINE static inline __attribute__((always_inline))

/* One tile: C[mr, NV*width(VT)] (+)= alpha * A[mr, k0..k1) B[k0..k1), NV*width). */
#define DEFINE_TILE(NAME, VT, NV)                                                              \
  INLINE void NAME(const int mr, int k0, int k1, float alpha, const float *a, long ars,       \
                   long aks, const float *b, long ldb, int beta, float *c, long ldc) {         \
    enum { W = (int)(sizeof(VT) / sizeof(float)) };                                            \
    VT acc[MR][NV];                                                                            \
    for (int r = 0; r < MR; r++)                                                               \
      for (int v = 0; v < NV; v++) acc[r][v] = (VT){0};                                        \
    for (int k = k0; k < k1; k++) {                                                            \
      VT bv[NV];                                                                               \
      for (int v = 0; v < NV; v++) bv[v] = *(const VT *)(b + (long)k * ldb + v * W);           \
      for (int r = 0; r < MR; r++)                                                             \
        if (r < mr) {                                                                          \
          const float av = a[r * ars + (long)k * aks];                                         \
          for (int v = 0; v < NV; v++) acc[r][v] += av * bv[v];                                \
        }                                                                                      \
    }                                                                                          \
    for (int r = 0; r < MR; r++)                                                               \
      if (r < mr)                                                                              \
        for (int v = 0; v < NV; v++) {                                                         \
          VT *dst = (VT *)(c + r * ldc + v * W);                                               \
          *dst = beta ? *dst + alpha * acc[r][v] : alpha * acc[r][v];                          \
        }                                                                                      \
  }

DEFINE_TILE(tile32, vec_t, 32 / VW)
DEFINE_TILE(tile16, vec_t, 16 / VW)
DEFINE_TILE(tile8, vec8_t, 1)

/* Columns one at a time (fewer than 8 left). */
static void tile_cols(int mr, int nc, int k0, int k1, float alpha, const float *a, long ars,
                      long aks, const float *b, long ldb, int beta, float *c, long ldc) {
  for (int r = 0; r < mr; r++)
    for (int j = 0; j < nc; j++) {
      float s = 0.0f;
      for (int k = k0; k < k1; k++) s += a[r * ars + (long)k * aks] * b[(long)k * ldb + j];
      float *dst = c + r * ldc + j;
      *dst = beta ? *dst + alpha * s : alpha * s;
    }
}

/* Calls TILE with the row count as a constant (mr in 1..MR). */
#define SWITCH_MR(TILE, mr, ...)       \
  switch (mr) {                        \
  case 1: TILE(1, __VA_ARGS__); break; \
  case 2: TILE(2, __VA_ARGS__); break; \
  case 3: TILE(3, __VA_ARGS__); break; \
  case 4: TILE(4, __VA_ARGS__); break; \
  case 5: TILE(5, __VA_ARGS__); break; \
  case 6: TILE(6, __VA_ARGS__); break; \
  case 7: TILE(7, __VA_ARGS__); break; \
  default: TILE(8, __VA_ARGS__); break; \
  }

void attn_gemm(int M, int N, int K, float alpha, const float *a, long ars, long aks,
               const float *b, long ldb, long bps, int beta, float *c, long ldc, int pad_n,
               ag_mask mask, int delta) {
  if (M <= 0 || N <= 0) return;
  if (K < 0) K = 0;
  const int n_whole = pad_n ? (N + AG_NR - 1) / AG_NR * AG_NR : N / AG_NR * AG_NR;
  for (int j0 = 0; j0 < N;) {
    const int left = N - j0;
    const int w = j0 < n_whole ? AG_NR : left >= 16 ? 16 : left >= 8 ? 8 : left;
    for (int i0 = 0; i0 < M; i0 += MR) {
      const int mr = M - i0 < MR ? M - i0 : MR;
      const int last = i0 + mr - 1;
      int k0 = 0, k1 = K;
      if (mask == AG_COLS_UPTO_ROW && j0 > last + delta) continue;
      if (mask == AG_K_UPTO_ROW && last + delta + 1 < k1) k1 = last + delta + 1;
      if (mask == AG_K_FROM_ROW && i0 - delta > k0) k0 = i0 - delta;
      if (k1 < k0) k1 = k0;
      if (k1 == k0 && beta) continue; /* nothing to add */
      const float *at = a + (long)i0 * ars;
      const float *bt = b + (long)(j0 / AG_NR) * bps + j0 % AG_NR;
      float *ct = c + (long)i0 * ldc + j0;
      if (w == AG_NR)
        SWITCH_MR(tile32, mr, k0, k1, alpha, at, ars, aks, bt, ldb, beta, ct, ldc)
      else if (w == 16)
        SWITCH_MR(tile16, mr, k0, k1, alpha, at, ars, aks, bt, ldb, beta, ct, ldc)
      else if (w == 8)
        SWITCH_MR(tile8, mr, k0, k1, alpha, at, ars, aks, bt, ldb, beta, ct, ldc)
      else
        tile_cols(mr, w, k0, k1, alpha, at, ars, aks, bt, ldb, beta, ct, ldc);
    }
    j0 += w;
  }
}
