/* tests/model/strict_backend.h: the test-only "cpu-strict" dispatch table
 * (tests/model/strict_backend.c): CPU kernels behind memory the host cannot
 * touch outside backend calls. */
#ifndef VLM_TESTS_STRICT_BACKEND_H
#define VLM_TESTS_STRICT_BACKEND_H

#include "kernels/backend.h"

/* exit status of a process whose host code touched backend memory */
#define STRICT_VIOLATION_EXIT 86

/* The table (installs the SIGSEGV reporter on first use). */
const vlm_backend *strict_backend(void);
/* Backend calls made so far. */
long strict_backend_calls(void);

#endif
