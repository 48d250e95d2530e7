/* tests/gpu/emu/include/cuda_runtime_api.h: stand-in for the CUDA header of that name in the CPU
 * emulation build (tests/gpu/emu/build.sh); everything lives in emu_cuda.h. */
#include "emu_cuda.h"
