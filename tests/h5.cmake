# tests/h5.cmake: parallel HDF5 (io/h5util.c) and model files (io/model_h5.c,
# `vlmtrain import` / `vlmtrain export`). Files land in VLM_TEST_WORK/h5/.
#
# h5_util_np3:      C, 3 ranks: collective range writes/reads (actual I/O mode
#                   asserted), split-independent checksums, attributes, atomic
#                   commit (stale .tmp, keep-K, latest, injected failure, failed
#                   rename), corrupted tensor, bad files. Writes h5/ranges.h5.
# h5_util_np1/np2:  C, 1 and 2 ranks verify every checksum of that file.
# h5_util_h5dump:   `h5dump -H` reads it.
# h5_model_load:    C, 2 ranks: the API the trainer uses (model_h5_load on
#                   every rank, model_h5_load_ranges with ZeRO shards and
#                   overlapping ranges, model_h5_save, a checkpoint-style file,
#                   absent LoRA initialised as weights_load_hf_dir does).
# h5_model_load_h5dump: `h5dump -H` reads the files it wrote.
# h5_model:         Python: import/export round trips (fp32, bf16, fp16; single
#                   file and shards; 1, 2 and 3 ranks), byte-identical tensor
#                   data, h5dump -H and h5py on every file written, --trained-only,
#                   bad inputs, a writer killed mid-file.
set(_mpi ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG})
add_executable(test_h5util h5/test_h5util.c)
target_link_libraries(test_h5util PRIVATE vlm)

add_test(NAME h5_util_np3 COMMAND ${_mpi} 3 --oversubscribe $<TARGET_FILE:test_h5util> write h5
  WORKING_DIRECTORY ${VLM_TEST_WORK})
add_test(NAME h5_util_np1 COMMAND ${_mpi} 1 --oversubscribe $<TARGET_FILE:test_h5util> verify h5
  WORKING_DIRECTORY ${VLM_TEST_WORK})
add_test(NAME h5_util_np2 COMMAND ${_mpi} 2 --oversubscribe $<TARGET_FILE:test_h5util> verify h5
  WORKING_DIRECTORY ${VLM_TEST_WORK})
add_test(NAME h5_util_h5dump COMMAND h5dump -H h5/ranges.h5 WORKING_DIRECTORY ${VLM_TEST_WORK})
set_tests_properties(h5_util_np3 h5_util_np1 h5_util_np2 h5_util_h5dump PROPERTIES
  ENVIRONMENT "${VLM_TEST_ENV}")
set_tests_properties(h5_util_np3 PROPERTIES FIXTURES_SETUP h5_ranges)
set_tests_properties(h5_util_np1 h5_util_np2 h5_util_h5dump PROPERTIES FIXTURES_REQUIRED h5_ranges)

add_executable(test_model_load h5/test_model_load.c)
target_link_libraries(test_model_load PRIVATE vlm)
add_test(NAME h5_model_load COMMAND ${_mpi} 2 --oversubscribe $<TARGET_FILE:test_model_load>
  ${PROJECT_SOURCE_DIR}/configs/tiny.json WORKING_DIRECTORY ${VLM_TEST_WORK})
set_tests_properties(h5_model_load PROPERTIES ENVIRONMENT "${VLM_TEST_ENV}"
  FIXTURES_SETUP h5_load_files)
add_test(NAME h5_model_load_h5dump COMMAND h5dump -H h5/load/m.h5 h5/load/saved.h5 h5/load/ckpt.h5
  h5/load/nolora.h5 WORKING_DIRECTORY ${VLM_TEST_WORK})
set_tests_properties(h5_model_load_h5dump PROPERTIES FIXTURES_REQUIRED h5_load_files)

vlm_py_test(h5_model h5/test_model_h5.py ${PROJECT_SOURCE_DIR}/configs/tiny.json
  ${PROJECT_SOURCE_DIR}/configs/train-tiny.json)
set_tests_properties(h5_model PROPERTIES TIMEOUT 900)
