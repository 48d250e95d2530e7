/* kernels/cpu/backend_cpu.c: the CPU entry of the run-time dispatch table
 * (kernels/backend.h): host memory (64-byte aligned, zeroed; large buffers on
 * huge pages, vlm_big_alloc), memcpy for every transfer (split over the OpenMP
 * team when large), and the kernels of kernels/cpu/ unchanged. It adds no
 * behaviour of its own, so a model run through it is bit-identical to calling
 * the kernels. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "common/vlm.h"
#include "kernels/backend.h"

static void *cpu_alloc(size_t bytes, const char *what) {
  (void)what; /* the caller reports a failure, naming the buffer */
  void *p = vlm_big_alloc(bytes);
  if (p) memset(p, 0, bytes);
  return p;
}

static void cpu_free(void *p) { free(p); }

/* Bytes from which copy and zero split the range over the OpenMP team: the
 * gradient zeroing alone (a few hundred MB per step at `small`) otherwise runs on
 * one core while the others wait. Below it, or inside any parallel region
 * (active or serialised: no nested team, see tests/model/test_omp_nesting.c),
 * one memcpy/memset. Each thread takes a contiguous piece cut at 64-byte
 * multiples of the range. */
#define PAR_BYTES ((size_t)1 << 20)

/* dst[0..bytes) = src[0..bytes), or zeros when src is NULL. */
static void copy_or_zero(void *dst, const void *src, size_t bytes) {
  if (bytes < PAR_BYTES || omp_get_level() > 0) {
    if (src)
      memcpy(dst, src, bytes);
    else
      memset(dst, 0, bytes);
    return;
  }
#pragma omp parallel
  {
    const size_t nt = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num();
    const size_t lines = (bytes + 63) / 64;
    size_t lo = lines * t / nt * 64, hi = lines * (t + 1) / nt * 64;
    if (lo > bytes) lo = bytes;
    if (hi > bytes) hi = bytes;
    if (hi > lo) {
      if (src)
        memcpy((char *)dst + lo, (const char *)src + lo, hi - lo);
      else
        memset((char *)dst + lo, 0, hi - lo);
    }
  }
}

static void cpu_memcpy(void *dst, const void *src, size_t bytes) {
  if (bytes) copy_or_zero(dst, src, bytes);
}

static void cpu_zero(float *x, long n) {
  if (n > 0) copy_or_zero(x, NULL, (size_t)n * sizeof(float));
}

static void cpu_sync(void) {}

static const vlm_backend CPU = {
    .name = "cpu",
    .on_device = 0,
    .host_parallel = 1,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_memcpy,
    .download = cpu_memcpy,
    .copy = cpu_memcpy,
    .zero = cpu_zero,
    .sync = cpu_sync,
    .linear_forward = linear_forward,
    .linear_backward = linear_backward,
    .matmul_forward = matmul_forward,
    .matmul_backward = matmul_backward,
    .layernorm_forward = layernorm_forward,
    .layernorm_backward = layernorm_backward,
    .rmsnorm_forward = rmsnorm_forward,
    .rmsnorm_backward = rmsnorm_backward,
    .gelu_forward = gelu_forward,
    .gelu_backward = gelu_backward,
    .swiglu_forward = swiglu_forward,
    .swiglu_backward = swiglu_backward,
    .softmax_forward = softmax_forward,
    .softmax_backward = softmax_backward,
    .rope_forward = rope_forward,
    .rope_backward = rope_backward,
    .attention_scratch_floats = attention_scratch_floats,
    .attention_forward = attention_forward,
    .attention_backward = attention_backward,
    .cross_entropy_forward_backward = cross_entropy_forward_backward,
    .patch_im2col = patch_im2col,
    .bicubic_resize_forward = bicubic_resize_forward,
    .bicubic_resize_backward = bicubic_resize_backward,
    .sincos_2d_table = sincos_2d_table,
    .adamw_step = adamw_step,
    .sum_squares = sum_squares,
    .lora_forward = lora_forward,
    .lora_backward = lora_backward,
    .add_into = add_into,
    .add_vec = add_vec,
    .add_rows_bcast = add_rows_bcast,
    .rows_copy = rows_copy,
    .rows_segment_add = rows_segment_add,
    .image_normalize = image_normalize,
};

const vlm_backend *vlm_backend_cpu(void) { return &CPU; }
