# tests/slurm.cmake: Slurm and PMIx support (slurm/, docs/slurm.md).
#  slurm_runtime      slurm/runtime.c alone, one process: start-up check against faked
#                     SLURM_*/PMIX_*/OMPI_* environments, signal flags, requeue through a
#                     fake scontrol, watchdog quiet on collectives that end
#  slurm_runtime_mpi  the same under mpirun -np 2, and the watchdog aborting a job whose
#                     last rank never reaches a barrier, within its timeout + a few seconds
#  slurm_scaling      `vlmtrain scaling` on made-up run directories: every number of the
#                     table, --weak, resumed runs, the PNG, bad inputs
#  slurm_cluster      a real one-node Slurm (munged, slurmctld, slurmd started and stopped
#                     by the test): sbatch training on 2 tasks with srun --mpi=pmix, wrong
#                     launches refused, USR1 -> checkpoint -> requeue -> identical weights,
#                     the scaling sweep's table and PNG, the watchdog under srun
#                     (tests/slurm/run_slurm_tests.py)
vlm_c_test(slurm_runtime slurm/test_runtime.c unit)
vlm_py_test(slurm_runtime_mpi slurm/test_runtime.py $<TARGET_FILE:slurm_runtime>)
set_tests_properties(slurm_runtime_mpi PROPERTIES TIMEOUT 180 LABELS "mpi")
vlm_py_test(slurm_scaling slurm/test_scaling.py)
vlm_py_test(slurm_cluster slurm/run_slurm_tests.py $<TARGET_FILE:slurm_runtime>)
set_tests_properties(slurm_cluster PROPERTIES TIMEOUT 900 LABELS "slurm;mpi" RUN_SERIAL TRUE)
