# tests/kernels.cmake: the CPU kernels (kernels/kernels.h, all but attention) against
# PyTorch. kernel_cases_generate writes kernel_cases.h5 into VLM_TEST_WORK (a fixture);
# kernel_tests reads it and checks every kernel forward and backward.
vlm_py_test(kernel_cases_generate kernels/gen_kernel_cases.py kernel_cases.h5)
set_tests_properties(kernel_cases_generate PROPERTIES FIXTURES_SETUP kernel_cases)

vlm_c_test(kernel_tests kernels/test_kernels.c kernel_cases.h5)
set_tests_properties(kernel_tests PROPERTIES FIXTURES_REQUIRED kernel_cases TIMEOUT 60)

# the CPU backend's copy/zero (split over threads when large) and its allocator
vlm_c_test(backend_memory kernels/test_backend_memory.c)
set_tests_properties(backend_memory PROPERTIES TIMEOUT 60)
