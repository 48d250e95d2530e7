# Attention kernel (kernels/cpu/attention.c) against PyTorch: the generator
# writes attention_cases.h5 into the test working directory (fixture setup),
# then test_attention runs forward and backward on every case and compares.
vlm_py_test(attention_gen_cases kernels/gen_attention_cases.py attention_cases.h5)
set_tests_properties(attention_gen_cases PROPERTIES FIXTURES_SETUP attention_cases)

vlm_c_test(test_attention kernels/test_attention.c attention_cases.h5)
set_tests_properties(test_attention PROPERTIES FIXTURES_REQUIRED attention_cases TIMEOUT 60)

# The same cases on attn_gemm's portable tiles (8-float vectors, 3-row tiles: what
# a build for an x86 CPU without AVX-512 runs): attention.c and attn_gemm.c built
# into the test once more with AVX-512 off. Their definitions take precedence over
# the library's attention object, which the linker then leaves out.
if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64")
  add_executable(test_attention_portable kernels/test_attention.c
    ${PROJECT_SOURCE_DIR}/kernels/cpu/attention.c ${PROJECT_SOURCE_DIR}/kernels/cpu/attn_gemm.c)
  target_compile_options(test_attention_portable PRIVATE -mno-avx512f -ffp-contract=fast)
  target_link_libraries(test_attention_portable PRIVATE vlm)
  add_test(NAME test_attention_portable COMMAND test_attention_portable attention_cases.h5
    WORKING_DIRECTORY ${VLM_TEST_WORK})
  set_tests_properties(test_attention_portable PROPERTIES ENVIRONMENT "${VLM_TEST_ENV}"
    FIXTURES_REQUIRED attention_cases TIMEOUT 60)
endif()
