# tests/dataset.cmake: dataset format v1 (io/dataset.c), the sample order
# (io/loader.c), the synthetic dataset and `vlmtrain mkdata`. Files land in
# VLM_TEST_WORK under names starting with "dataset_".
set(_tiny ${PROJECT_SOURCE_DIR}/configs/tiny.json)

# C unit test: synthetic write/read/validation, determinism, writer, data order.
vlm_c_test(dataset_unit dataset/test_dataset.c ${_tiny})

# dataset_tool: the C reader/writer as a command, for the Python tests.
add_executable(dataset_tool dataset/dataset_tool.c)
target_link_libraries(dataset_tool PRIVATE vlm)

# Layout, learnability, h5py-written files accepted, bad files rejected.
vlm_py_test(dataset_h5py dataset/test_dataset_h5py.py $<TARGET_FILE:dataset_tool> ${_tiny})

# `vlmtrain mkdata`: help, bad options, a run. Skipped (exit 77) while app/main.c
# does not dispatch to cmd_mkdata.
vlm_py_test(dataset_mkdata_cli dataset/test_mkdata_cli.py ${_tiny})
set_tests_properties(dataset_mkdata_cli PROPERTIES SKIP_RETURN_CODE 77)
