#!/usr/bin/env bash
# scripts/test.sh: the whole test suite. Installs the Debian packages, builds
# vlmtrain with -Wall -Wextra -Werror and runs every test under ctest, builds the
# CUDA backend with nvcc (compile and link only: no GPU here), checks its kernels'
# logic, its dispatch table and its NCCL layer in a CPU emulation (NCCL emulated
# over MPI), builds the whole program against that emulation for tiny runs on 1 and
# 2 ranks, then builds again with AddressSanitizer + UBSan and runs the suite once
# more.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/install-deps.sh"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
echo "== build (Release, -Werror) =="
bash "$here/scripts/build.sh" "$here/build"
echo "== tests =="
(cd "$here/build" && ctest --output-on-failure --timeout 900)
echo "== build the CUDA backend (nvcc, -Werror): compiled and linked; CI has no GPU to run it =="
cmake -S "$here" -B "$here/build-cuda" -DCMAKE_BUILD_TYPE=Release -DVLMTRAIN_WERROR=ON \
  -DVLMTRAIN_CUDA=ON -DCMAKE_CUDA_COMPILER="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
cmake --build "$here/build-cuda" -j "$(nproc)" --target vlm_cuda check_kernels check_backend \
  check_nccl bench_gemm_attention
echo "== CUDA kernels, compiled for a CPU emulation of CUDA, against the CPU kernels =="
bash "$here/tests/gpu/emu/build.sh" "$here/build-emu" > /dev/null
"$here/build-emu/check_kernels"
echo "== the CUDA dispatch table (emulated) against the CPU kernels: 1 rank, then 2 ranks with 2 emulated GPUs =="
"$here/build-emu/check_backend"
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe -np 2 \
  -x VLM_EMU_DEVICES=2 "$here/build-emu/check_backend" > "$here/build-emu/check_backend-2ranks.txt" 2>&1 ||
  { cat "$here/build-emu/check_backend-2ranks.txt"; exit 1; }
grep "passed" "$here/build-emu/check_backend-2ranks.txt"
echo "== the NCCL layer (kernels/cuda/nccl_comm.c) over the emulated NCCL (MPI): 2 ranks =="
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe -np 2 \
  -x VLM_EMU_DEVICES=2 "$here/build-emu/check_nccl" --quick > "$here/build-emu/check_nccl-2ranks.txt" 2>&1 ||
  { cat "$here/build-emu/check_nccl-2ranks.txt"; exit 1; }
grep "passed" "$here/build-emu/check_nccl-2ranks.txt"
echo "== vlmtrain built whole with the emulated CUDA backend: --device cuda against --device cpu =="
bash "$here/tests/gpu/emu/build_vlmtrain.sh" "$here/build-emu-vlmtrain"
# 1 rank, then ZeRO-3 on 2 ranks (--device cuda through the emulated NCCL) against the CPU
VLM_EMU_DEVICES=2 VLM_CHECK_RANKS=2 bash "$here/tests/gpu/model_checks.sh" \
  "$here/build-emu-vlmtrain/vlmtrain" "$here/build-emu-vlmtrain" --quick | grep -E "parity|bf16|model_checks"
echo "== build (AddressSanitizer + UBSan) =="
bash "$here/scripts/build.sh" "$here/build-asan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVLMTRAIN_SANITIZE=ON
echo "== tests under AddressSanitizer + UBSan =="
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=0:detect_odr_violation=0}"
export LSAN_OPTIONS="suppressions=$here/tests/lsan.supp:print_suppressions=0:fast_unwind_on_malloc=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
(cd "$here/build-asan" && ctest --output-on-failure --timeout 1800)
