# tests/model_tool.cmake: the C side of the PyTorch model comparison
# (tests/model.cmake): dump_grads writes one micro-batch's loss and gradients.
add_executable(dump_grads ${CMAKE_CURRENT_SOURCE_DIR}/model/dump_grads.c
  ${CMAKE_CURRENT_SOURCE_DIR}/model/model_inputs.c)
target_link_libraries(dump_grads PRIVATE vlm)

# test_device_clean: the model, ZeRO on one rank, AdamW and checkpoints through
# the test-only "cpu-strict" table (backend memory the host cannot touch), against
# the CPU backend. Its model and data come from `vlmtrain init` / `mkdata`.
add_executable(test_device_clean ${CMAKE_CURRENT_SOURCE_DIR}/model/test_device_clean.c
  ${CMAKE_CURRENT_SOURCE_DIR}/model/strict_backend.c ${CMAKE_CURRENT_SOURCE_DIR}/model/model_inputs.c)
target_link_libraries(test_device_clean PRIVATE vlm)
add_test(NAME device_clean_inputs COMMAND sh -c
  "rm -rf device_clean device_clean_ckpt && mkdir device_clean && \
   \"$0\" init --config \"$1\" --out device_clean/model --seed 7 >/dev/null && \
   \"$0\" mkdata --synthetic --config \"$1\" --out device_clean/data.h5 --samples 12 --seed 8 >/dev/null"
  $<TARGET_FILE:vlmtrain> ${PROJECT_SOURCE_DIR}/configs/tiny.json
  WORKING_DIRECTORY ${VLM_TEST_WORK})
add_test(NAME device_clean COMMAND test_device_clean device_clean/model device_clean/data.h5
  ${CMAKE_CURRENT_SOURCE_DIR}/model/device_clean.json WORKING_DIRECTORY ${VLM_TEST_WORK})
set_tests_properties(device_clean_inputs PROPERTIES ENVIRONMENT "${VLM_TEST_ENV}"
  FIXTURES_SETUP device_clean)
set_tests_properties(device_clean PROPERTIES ENVIRONMENT "${VLM_TEST_ENV}"
  FIXTURES_REQUIRED device_clean LABELS "model")

# test_omp_nesting: no kernel is called from inside a serialised OpenMP region
# (where its own parallel regions would start fresh threads on every call).
add_executable(test_omp_nesting ${CMAKE_CURRENT_SOURCE_DIR}/model/test_omp_nesting.c
  ${CMAKE_CURRENT_SOURCE_DIR}/model/model_inputs.c)
target_link_libraries(test_omp_nesting PRIVATE vlm)
add_test(NAME omp_nesting COMMAND test_omp_nesting device_clean/model device_clean/data.h5
  ${CMAKE_CURRENT_SOURCE_DIR}/model/omp_nesting.json WORKING_DIRECTORY ${VLM_TEST_WORK})
set_tests_properties(omp_nesting PROPERTIES ENVIRONMENT "${VLM_TEST_ENV}"
  FIXTURES_REQUIRED device_clean LABELS "model")
