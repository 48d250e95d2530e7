# tests/cli.cmake: the vlmtrain program end to end: help, registry counts,
# presets, a short run with --audit, and bad inputs (clear errors, exit 1).
vlm_py_test(cli cli/test_cli.py)
