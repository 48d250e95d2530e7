/* kernels/cpu/backend_cpu.c: the CPU entry of the run-time dispatch table
 * (kernels/backend.h): host memory (64-byte aligned, zeroed), memcpy for every
 * transfer, and the kernels of kernels/cpu/ unchanged. It adds no behaviour of
 * its own, so a model run through it is bit-identical to calling the kernels. */
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"

static void *cpu_alloc(size_t bytes, const char *what) {
  (void)what; /* the caller reports a failure, naming the buffer */
  size_t rounded = (bytes + 63) / 64 * 64;
  if (rounded == 0) rounded = 64;
  void *p = aligned_alloc(64, rounded);
  if (p) memset(p, 0, rounded);
  return p;
}

static void cpu_free(void *p) { free(p); }

static void cpu_memcpy(void *dst, const void *src, size_t bytes) {
  if (bytes) memcpy(dst, src, bytes);
}

static void cpu_zero(float *x, long n) {
  if (n > 0) memset(x, 0, (size_t)n * sizeof(float));
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
