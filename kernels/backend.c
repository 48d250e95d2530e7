/* kernels/backend.c: choosing the dispatch table by name (`--device cpu|cuda`,
 * kernels/backend.h). The CUDA table is built by kernels/cuda/ and linked only
 * when CMake was configured with -DVLMTRAIN_CUDA=ON (which defines
 * VLMTRAIN_HAVE_CUDA here); otherwise asking for it is a clear error. */
#include <string.h>

#include "common/vlm.h"
#include "kernels/backend.h"

#ifdef VLMTRAIN_HAVE_CUDA
/* kernels/cuda/backend_cuda.c: picks this rank's GPU, creates the context and
 * streams; NULL with a VLM_FAIL message when no GPU can be used. */
const vlm_backend *vlm_backend_cuda_init(void);
void vlm_backend_cuda_shutdown(void);
#endif

/* vlm_backend_get reports through VLM_FAIL, which returns -1: this wrapper turns
 * that into the NULL of the interface. */
static int get(const char *name, const vlm_backend **out) {
  *out = NULL;
  if (!name) name = "(null)";
  if (strcmp(name, "cpu") == 0) {
    *out = vlm_backend_cpu();
    return 0;
  }
  if (strcmp(name, "cuda") == 0) {
#ifdef VLMTRAIN_HAVE_CUDA
    *out = vlm_backend_cuda_init();
    if (!*out) VLM_FAIL("--device cuda: the CUDA backend could not be set up (see above)");
    return 0;
#else
    VLM_FAIL("--device cuda: this vlmtrain was built without the CUDA backend (configure with "
             "-DVLMTRAIN_CUDA=ON)");
#endif
  }
  VLM_FAIL("--device \"%s\" is not a device: choose cpu or cuda", name);
}

const vlm_backend *vlm_backend_get(const char *name) {
  const vlm_backend *b = NULL;
  if (get(name, &b) != 0) return NULL;
  return b;
}

void vlm_backend_shutdown(const vlm_backend *b) {
  if (!b) return;
#ifdef VLMTRAIN_HAVE_CUDA
  if (strcmp(b->name, "cuda") == 0) vlm_backend_cuda_shutdown();
#endif
}
