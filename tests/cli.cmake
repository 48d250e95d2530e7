# tests/cli.cmake: the vlmtrain program end to end: help, registry counts,
# presets, a short run with --audit, --device, and bad inputs (clear errors,
# exit 1; a wrong --device value: exit 2).
vlm_py_test(cli cli/test_cli.py)
if(VLMTRAIN_CUDA) # --device cuda is then a real device: its CPU-only-build check is skipped
  set_property(TEST cli APPEND PROPERTY ENVIRONMENT "VLMTRAIN_HAVE_CUDA=1")
endif()
