# Attention kernel (kernels/cpu/attention.c) against PyTorch: the generator
# writes attention_cases.h5 into the test working directory (fixture setup),
# then test_attention runs forward and backward on every case and compares.
vlm_py_test(attention_gen_cases kernels/gen_attention_cases.py attention_cases.h5)
set_tests_properties(attention_gen_cases PROPERTIES FIXTURES_SETUP attention_cases)

vlm_c_test(test_attention kernels/test_attention.c attention_cases.h5)
set_tests_properties(test_attention PROPERTIES FIXTURES_REQUIRED attention_cases TIMEOUT 60)
