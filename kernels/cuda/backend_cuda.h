/* kernels/cuda/backend_cuda.h: the CUDA entry of the run-time dispatch table
 * (kernels/backend.h), implemented in kernels/cuda/backend_cuda.c. Plain C with no CUDA
 * header, so the CPU side (vlm_backend_get, built with VLMTRAIN_HAVE_CUDA) can include it
 * whether or not the CUDA toolkit's headers are on its include path. */
#ifndef VLM_KERNELS_CUDA_BACKEND_CUDA_H
#define VLM_KERNELS_CUDA_BACKEND_CUDA_H

#include "kernels/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Sets up the process's CUDA backend (once; later calls return the same table): picks
 * this rank's GPU with vlm_cuda_select_device(MPI_COMM_WORLD, ...) (MPI must be
 * initialised; collective over MPI_COMM_WORLD), creates one vlm_cuda_ctx and a small
 * device scratch. Returns the table (name "cuda", on_device 1, host_parallel 0), or NULL
 * with a VLM_FAIL message (no GPU, no usable device, out of device memory). */
const vlm_backend *vlm_backend_cuda_init(void);

/* Waits for the compute stream and frees what init set up (a no-op if nothing is);
 * pointers from the table's alloc must have been freed before. */
void vlm_backend_cuda_shutdown(void);

#ifdef __cplusplus
}
#endif

#endif
