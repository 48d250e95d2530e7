# tests/dataload.cmake: the parallel dataset reader (issue 4; dataset_open_mpi and
# dataset_read_samples in io/dataset.c). Files land in VLM_TEST_WORK/dataload*/.
#
# dataload_np3: C, 3 ranks: both modes byte-identical to dataset_read_sample on
#               random index sets (a rank with n = 0, repeats, samples with 0
#               and 2 images), HDF5's actual I/O mode collective, errors (bad
#               index, bad token id, missing file, wrong config) the same on
#               every rank. Under `timeout`: a hang fails instead of blocking.
# dataload_bad: Python: a copy with one token id out of range written by h5py;
#               `mpirun -np 3 test_dataload read` exits 1 in both modes, and in
#               collective mode every rank reports the sample and position.
set(_mpi ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG})
add_executable(test_dataload dataload/test_dataload.c)
target_link_libraries(test_dataload PRIVATE vlm)

add_test(NAME dataload_np3 COMMAND timeout 300 ${_mpi} 3 --oversubscribe
  $<TARGET_FILE:test_dataload> check ${PROJECT_SOURCE_DIR}/configs/tiny.json dataload
  WORKING_DIRECTORY ${VLM_TEST_WORK})
set_tests_properties(dataload_np3 PROPERTIES ENVIRONMENT "${VLM_TEST_ENV}" TIMEOUT 400
  LABELS "mpi")

vlm_py_test(dataload_bad dataload/test_dataload_bad.py $<TARGET_FILE:test_dataload>
  ${PROJECT_SOURCE_DIR}/configs/tiny.json)
set_tests_properties(dataload_bad PROPERTIES TIMEOUT 600 LABELS "mpi")
