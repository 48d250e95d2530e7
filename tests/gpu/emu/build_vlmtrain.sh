#!/usr/bin/env bash
# tests/gpu/emu/build_vlmtrain.sh [OUT_DIR]: builds the whole vlmtrain program with its
# CUDA backend compiled for the CPU emulation of CUDA (include/emu_cuda.h,
# emu_runtime.cpp) instead of the real CUDA libraries, so that `--device cuda` code paths
# run with no GPU: every source of the top-level CMakeLists.txt (common/, kernels/cpu/,
# kernels/*.c, modules/, io/, slurm/, app/) compiled with VLMTRAIN_HAVE_CUDA defined, plus
# the unchanged kernels/cuda/*.cu (through cu2cpp.py), kernels/cuda/backend_cuda.c,
# kernels/cuda/device.c and kernels/cuda/nccl_comm.c, with NCCL emulated over MPI
# (include/nccl.h, emu_nccl.c), so `mpirun -np N -x VLM_EMU_DEVICES=N` runs ZeRO-3 on
# the emulated CUDA backend across ranks.
# Libraries as the CMake build finds them: Open MPI, parallel HDF5 (hdf5-openmpi),
# OpenBLAS, cJSON, PCRE2, libpng, libjpeg, OpenMP (all through pkg-config).
# Writes OUT_DIR/vlmtrain (default /tmp/vlm-emu-vlmtrain), then runs `vlmtrain --help`
# as a smoke check. EMU_SANITIZE=1 builds with AddressSanitizer + UBSan.
# The emulation runs a kernel's blocks one after another on one core: far slower than
# the CPU backend; use it with tiny models only (docs/cuda.md gives a tiny run).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${1:-/tmp/vlm-emu-vlmtrain}"
mkdir -p "$out/src" "$out/obj"
rm -f "$out"/obj/*.o "$out/vlmtrain" # no stale object survives a failed compile
pkgs=(hdf5-openmpi ompi-c openblas libcjson libpcre2-8 libpng libjpeg)
for p in "${pkgs[@]}"; do
  pkg-config --exists "$p" || { echo "build_vlmtrain.sh: pkg-config finds no $p (scripts/install-deps.sh)" >&2; exit 1; }
done
dep_cflags=($(pkg-config --cflags "${pkgs[@]}"))
dep_libs=($(pkg-config --libs "${pkgs[@]}"))
flags=(-O2 -g -fopenmp -fno-math-errno -I"$here/include" -I"$root" -DVLMTRAIN_HAVE_CUDA
  ${EMU_SANITIZE:+-fsanitize=address,undefined -fno-omit-frame-pointer})
objs=()
jobs_max="$(nproc)"
throttle() { if (( $(jobs -r | wc -l) >= jobs_max )); then wait -n; fi; }

# the CUDA kernels, unchanged, as C++ for the emulation
for cu in "$root"/kernels/cuda/*.cu; do
  name="$(basename "$cu" .cu)"
  python3 "$here/cu2cpp.py" "$cu" "$out/src/$name.cpp"
  g++ -std=c++17 -Wall -Wextra -Wno-unknown-pragmas "${flags[@]}" "${dep_cflags[@]}" \
    -c "$out/src/$name.cpp" -o "$out/obj/cu_$name.o" &
  objs+=("$out/obj/cu_$name.o")
  throttle
done
g++ -std=c++17 -Wall -Wextra "${flags[@]}" -c "$here/emu_runtime.cpp" \
  -o "$out/obj/emu_runtime.o" &
objs+=("$out/obj/emu_runtime.o")
throttle

# every C source of the program (the top-level CMakeLists.txt's globs), the plain-C
# files of the CUDA backend, and the NCCL emulation
shopt -s nullglob
csrc=("$root"/common/*.c "$root"/kernels/*.c "$root"/kernels/cpu/*.c "$root"/modules/*.c
  "$root"/io/*.c "$root"/slurm/*.c "$root"/app/*.c
  "$root"/kernels/cuda/backend_cuda.c "$root"/kernels/cuda/device.c
  "$root"/kernels/cuda/nccl_comm.c "$here"/emu_nccl.c)
shopt -u nullglob
for c in "${csrc[@]}"; do
  rel="${c#"$root"/}"
  name="${rel//\//_}"
  gcc -std=c11 -Wall -Wextra "${flags[@]}" "${dep_cflags[@]}" -c "$c" \
    -o "$out/obj/${name%.c}.o" &
  objs+=("$out/obj/${name%.c}.o")
  throttle
done
wait
for o in "${objs[@]}"; do
  [ -f "$o" ] || { echo "build_vlmtrain.sh: $o was not built (compile error above)" >&2; exit 1; }
done
g++ "${flags[@]}" "${objs[@]}" "${dep_libs[@]}" -lm -lpthread -o "$out/vlmtrain"
"$out/vlmtrain" --help > "$out/help.txt"
echo "$out/vlmtrain"
