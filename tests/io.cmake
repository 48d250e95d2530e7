# tests/io.cmake: the io/ layer: model config and training config parsing
# (io/config.c, io/train_config.c), the safetensors reader and writer
# (io/safetensors.c) and HF model-directory weights (io/weights.c). Files land
# in VLM_TEST_WORK/io/.
#
# io_config:      C unit tests of both configs, bad configs named by key.
# io_st_make:     Python writes valid safetensors (F32/BF16/F16) with their
#                 expected fp32 values, and a set of bad files (fixture).
# io_safetensors: C reads them back exactly, rejects each bad file with a clear
#                 message, and writes F32/BF16/F16 files with st_write (fixture).
# io_st_verify:   Python checks the C-written files: layout, alignment, padding,
#                 and bf16/f16 round-to-nearest-even against torch/numpy.
# io_weights:     C round-trips a tiny model through a HF directory (single
#                 file and shards) and checks missing/unexpected/shape errors.
vlm_c_test(io_config io/test_config.c ${PROJECT_SOURCE_DIR})

vlm_py_test(io_st_make io/make_safetensors.py)
set_tests_properties(io_st_make PROPERTIES FIXTURES_SETUP io_st_files)

vlm_c_test(io_safetensors io/test_safetensors.c)
set_tests_properties(io_safetensors PROPERTIES FIXTURES_REQUIRED io_st_files
  FIXTURES_SETUP io_st_written)

vlm_py_test(io_st_verify io/verify_safetensors.py)
set_tests_properties(io_st_verify PROPERTIES FIXTURES_REQUIRED io_st_written)

vlm_c_test(io_weights io/test_weights.c ${PROJECT_SOURCE_DIR}/configs/tiny.json)
