# tests/mkdata_json.cmake: `vlmtrain mkdata --json` (issue 6): io/image.c against
# PIL, io/conversation.c against an independent Python preprocessing, skips,
# truncation, the parallel writer at 1, 2 and 3 ranks, and a short training run
# on the result. The corpus (images, a small BPE ranks file, Monkey and ChatML
# JSON, a model config) is made at test time in VLM_TEST_WORK/mkdata_json/.
# image_tool exposes the decoder and resizer as a command for the comparison.
add_executable(image_tool mkdata_json/image_tool.c)
target_link_libraries(image_tool PRIVATE vlm)

vlm_py_test(mkdata_json mkdata_json/test_mkdata_json.py $<TARGET_FILE:image_tool>
  $<TARGET_FILE:dataset_tool> ${PROJECT_SOURCE_DIR}/configs/tiny.json
  ${PROJECT_SOURCE_DIR}/configs/train-tiny.json)
set_tests_properties(mkdata_json PROPERTIES TIMEOUT 900)
