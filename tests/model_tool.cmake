# tests/model_tool.cmake: the C side of the PyTorch model comparison
# (tests/model.cmake): dump_grads writes one micro-batch's loss and gradients.
add_executable(dump_grads ${CMAKE_CURRENT_SOURCE_DIR}/model/dump_grads.c)
target_link_libraries(dump_grads PRIVATE vlm)
