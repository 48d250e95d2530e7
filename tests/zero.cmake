# tests/zero.cmake: ZeRO-3 over MPI against the single-process run (world sizes
# 1-4, grids (R,S), frozen sharded and replicated, byte accounting).
vlm_py_test(zero zero/test_zero.py)
set_tests_properties(zero PROPERTIES TIMEOUT 900 LABELS "mpi")
