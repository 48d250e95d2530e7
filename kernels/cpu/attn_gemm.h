/* kernels/cpu/attn_gemm.h: the small matrix products inside the CPU attention
 * kernel (kernels/cpu/attention.c), private to kernels/cpu/.
 *
 * attention.c multiplies one block of at most 128 queries with one head's keys
 * or values: products of 128 x 512 x 128 and smaller, one per (block, head),
 * each on one thread. At these sizes cblas_sgemm spends much of its time packing
 * its operands, and it computes every entry of a causal block, half of whose
 * diagonal tile is masked. attn_gemm is a register-tiled product without
 * packing (its callers lay out the one operand that needs it once per call) that
 * skips, per tile, the work a causal mask makes zero. Single-threaded; nothing
 * is allocated. */
#ifndef VLM_KERNELS_CPU_ATTN_GEMM_H
#define VLM_KERNELS_CPU_ATTN_GEMM_H

/* What a causal mask lets attn_gemm skip, for row i of C (0-based), inner
 * index k and column j, with the caller's offset delta:
 *   AG_ALL           nothing;
 *   AG_COLS_UPTO_ROW only the columns j <= i + delta of row i are wanted: a
 *                    tile whose columns all lie beyond that for all its rows is
 *                    not computed (left as it was; the caller never reads it);
 *   AG_K_UPTO_ROW    A(i, k) is zero for k > i + delta: the inner loop of a tile
 *                    stops after its last row's limit;
 *   AG_K_FROM_ROW    A(i, k) is zero for k < i - delta: the inner loop of a tile
 *                    starts at its first row's limit. */
typedef enum { AG_ALL, AG_COLS_UPTO_ROW, AG_K_UPTO_ROW, AG_K_FROM_ROW } ag_mask;

/* Width of the column tiles: attn_gemm computes N rounded up to a multiple of
 * this where the caller says its rows are padded (pad_n), so that C and B can
 * be laid out with whole tiles. */
#define AG_NR 32

/* C[M, N] = alpha * A B (beta 0: C written, never read) or C += alpha * A B
 * (beta 1), with A(i, k) = a[i*ars + k*aks], C(i, j) = c[i*ldc + j] and
 *   B(k, j) = b[(j / AG_NR) * bps + k*ldb + j % AG_NR]:
 * a row-major B has bps = AG_NR; a B laid out in panels of AG_NR columns, each
 * panel's K rows contiguous (ldb = AG_NR, bps = K * AG_NR), is read at unit
 * stride. pad_n: B's and C's rows hold N rounded up to AG_NR (the extra columns
 * of B are zero), so the last column tile is computed whole; without it N need
 * not be a multiple of AG_NR, and B must be row-major. Rows whose inner range a
 * mask makes empty get 0 (beta 0) or stay (beta 1). */
void attn_gemm(int M, int N, int K, float alpha, const float *a, long ars, long aks,
               const float *b, long ldb, long bps, int beta, float *c, long ldc, int pad_n,
               ag_mask mask, int delta);

#endif
