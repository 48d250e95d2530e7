# tests/model.cmake: the model's numerics against the independent PyTorch reference
# in tests/reference/ (monkey_ref.py): the loss and every gradient of one
# micro-batch (the dump_grads tool, built by tests/model_tool.cmake) and ten AdamW
# steps of `vlmtrain train`. Each script first checks the reference itself.
vlm_py_test(model_grads reference/test_model_grads.py)
vlm_py_test(model_train_steps reference/test_train_steps.py)
set_tests_properties(model_grads model_train_steps PROPERTIES TIMEOUT 300 LABELS "model;reference")
# A step with no image after one with images: the ViT's gradients start from zero.
vlm_py_test(model_textonly_step reference/test_textonly_step.py)
set_tests_properties(model_textonly_step PROPERTIES TIMEOUT 120 LABELS "model")

# model_grads runs $VLM_DUMP_GRADS. The dump_grads target is defined by an area file
# included after this one, so the variable is set once all of tests/ is read. Without
# the target the test still runs and fails, saying so (never skipped silently).
function(_vlm_model_grads_tool_env)
  if(TARGET dump_grads)
    set_property(TEST model_grads APPEND PROPERTY ENVIRONMENT
      "VLM_DUMP_GRADS=$<TARGET_FILE:dump_grads>")
  else()
    message(WARNING "tests/model.cmake: there is no target dump_grads (tests/model_tool.cmake "
      "builds it from tests/model/dump_grads.c); the test model_grads fails until there is.")
    set_property(TEST model_grads APPEND PROPERTY ENVIRONMENT
      "VLM_DUMP_GRADS_MISSING=no CMake target dump_grads: tests/model_tool.cmake must define it")
  endif()
endfunction()
cmake_language(DEFER CALL _vlm_model_grads_tool_env)
