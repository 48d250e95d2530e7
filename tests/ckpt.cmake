# tests/ckpt.cmake: checkpoints and resume (same and other layouts, faults).
vlm_py_test(ckpt ckpt/test_ckpt.py)
set_tests_properties(ckpt PROPERTIES TIMEOUT 900 LABELS "mpi")
