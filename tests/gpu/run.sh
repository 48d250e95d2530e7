#!/usr/bin/env bash
# tests/gpu/run.sh: the GPU checks of the CUDA backend in one prepared script, for a
# machine with an NVIDIA GPU (A100, H100, H200). A few minutes; reads nothing from the
# network (the Debian packages of scripts/install-deps.sh must already be there).
#   1. records the device (nvidia-smi) and the toolkit (nvcc);
#   2. configures and builds with -DVLMTRAIN_CUDA=ON -DVLMTRAIN_WERROR=ON, for the GPU
#      present only (CUDA architecture "native"; VLM_CUDA_ARCH overrides), the four
#      GPU programs, vlmtrain and what they link;
#   3. check_kernels: every CUDA kernel against its CPU twin, fp32 and bf16, with the
#      tolerances stated in tests/gpu/check_kernels.c;
#   4. check_backend: the CUDA dispatch table (kernels/backend.h) entry by entry against
#      the CPU kernels, and its memory entries (one MPI rank; tests/gpu/check_backend.c);
#   5. check_nccl under mpirun, one rank per visible GPU (at most 8);
#   6. model_checks.sh: vlmtrain --device cuda against --device cpu (the tiny model, 20
#      ZeRO-3 steps: losses, gradient norms, final weights), the same in bf16, and the
#      small and medium configs' tokens/s and MFU against the bf16 dense peak;
#   7. bench_gemm_attention: bf16 GEMM and attention TFLOP/s against the bf16 peak.
# Every output also goes to $OUT (the device tool's folder) or BUILD/gpu-results.
# Exit status: 0 when every check passes, 1 when a check fails, 2 when the build fails.
# Environment: VLM_GPU_BUILD (build folder, default build-gpu), VLM_CUDA_ARCH,
# VLM_GPU_SANITIZE=1 (also run check_kernels under compute-sanitizer memcheck: slow).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${VLM_GPU_BUILD:-$root/build-gpu}"
out="${OUT:-$build/gpu-results}"
arch="${VLM_CUDA_ARCH:-native}"
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
step() { printf '\n== %s ==\n' "$*"; }
t0=$SECONDS

step "device"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv ||
    echo "nvidia-smi failed: is there a GPU and a driver?"
  nvcc --version | tail -n 2
} 2>&1 | tee "$out/device.txt"

step "configure and build (VLMTRAIN_CUDA=ON, -Werror, CUDA architectures: $arch)"
cfg=(-DCMAKE_BUILD_TYPE=Release -DVLMTRAIN_WERROR=ON -DVLMTRAIN_CUDA=ON
  "-DCMAKE_CUDA_ARCHITECTURES=$arch")
# The top level insists on a Python with torch for the ctest suite, which this script
# does not run: without one, point that check at `true` and build only the programs.
if ! /usr/bin/python3 -c "import torch, numpy, h5py" >/dev/null 2>&1; then
  echo "note: /usr/bin/python3 has no torch/numpy/h5py; the ctest suite is not configured"
  cfg+=("-DVLM_PYTHON=$(command -v true)")
fi
if ! cmake -S "$root" -B "$build" "${cfg[@]}" >"$out/configure.log" 2>&1; then
  tail -n 40 "$out/configure.log"
  echo "run.sh: configure failed (log: $out/configure.log)"
  exit 2
fi
if ! cmake --build "$build" -j "$(nproc)" --target check_kernels check_backend \
    check_nccl bench_gemm_attention vlmtrain >"$out/build.log" 2>&1; then
  grep -E -m 40 "error|Error" "$out/build.log"
  echo "run.sh: build failed (log: $out/build.log)"
  exit 2
fi
echo "built in $((SECONDS - t0)) s"

status=0
step "check_kernels: CUDA kernels against the CPU kernels"
timeout 600 "$build/tests/gpu/check_kernels" 2>&1 | tee "$out/check_kernels.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "check_backend: the CUDA dispatch table against the CPU kernels (1 MPI rank)"
timeout 300 mpirun -np 1 "$build/tests/gpu/check_backend" 2>&1 | tee "$out/check_backend.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

ngpu="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')"
[ "$ngpu" -ge 1 ] 2>/dev/null || ngpu=1
[ "$ngpu" -le 8 ] || ngpu=8
step "check_nccl: NCCL communicators and collectives on $ngpu rank(s)"
timeout 300 mpirun -np "$ngpu" "$build/tests/gpu/check_nccl" 2>&1 | tee "$out/check_nccl.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

if [ "${VLM_GPU_SANITIZE:-0}" = 1 ]; then
  step "check_kernels under compute-sanitizer memcheck"
  timeout 900 compute-sanitizer --tool memcheck --error-exitcode 3 \
    "$build/tests/gpu/check_kernels" >"$out/memcheck.txt" 2>&1
  rc=$?
  tail -n 5 "$out/memcheck.txt"
  [ "$rc" -eq 0 ] || status=1
fi

# with two or more GPUs, also ZeRO-3 on 2 ranks through NCCL against the CPU (model_checks.sh 1b)
ranks=1
[ "$ngpu" -ge 2 ] && ranks=2
step "model checks: --device cuda against --device cpu ($ranks rank(s)), bf16, small and medium throughput"
VLM_CHECK_RANKS="$ranks" timeout 900 bash "$root/tests/gpu/model_checks.sh" "$build/vlmtrain" "$out" 2>&1 |
  tee "$out/model_checks.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "bench_gemm_attention: throughput against the bf16 dense peak"
timeout 300 "$build/tests/gpu/bench_gemm_attention" 2>&1 | tee "$out/bench_gemm_attention.txt"

step "summary ($((SECONDS - t0)) s)"
head -n 1 "$out/device.txt"
grep -h "FAIL" "$out/check_kernels.txt" "$out/check_backend.txt" "$out/check_nccl.txt" || true
echo "check_kernels: $(tail -n 1 "$out/check_kernels.txt")"
echo "check_backend: $(tail -n 1 "$out/check_backend.txt")"
echo "model checks:  $(tail -n 1 "$out/model_checks.txt")"
echo "check_nccl:    $(tail -n 1 "$out/check_nccl.txt")"
echo "run.sh: $([ $status -eq 0 ] && echo 'all GPU checks passed' || echo 'GPU checks FAILED')"
exit $status
