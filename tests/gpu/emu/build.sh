#!/usr/bin/env bash
# tests/gpu/emu/build.sh [OUT_DIR]: builds check_kernels, check_backend and check_nccl
# against the CPU emulation of CUDA (include/emu_cuda.h, emu_runtime.cpp) and of NCCL
# (include/nccl.h, emu_nccl.c, over MPI): the unchanged kernels/cuda/*.cu, turned into
# C++ by cu2cpp.py, the dispatch table kernels/cuda/backend_cuda.c, the GPU choice
# kernels/cuda/device.c and the NCCL layer kernels/cuda/nccl_comm.c (plain C, compiled
# as they are), plus the CPU kernels they are compared with. Needs g++, python3,
# OpenBLAS and Open MPI (check_backend picks its GPU through MPI, as vlmtrain does; the
# emulation has VLM_EMU_DEVICES devices, default 1). Prints the paths of the programs.
# EMU_SANITIZE=1 builds with AddressSanitizer + UBSan.
# Usage: bash tests/gpu/emu/build.sh OUT && OUT/check_kernels && OUT/check_backend
#        (a singleton MPI run: no mpirun needed);
#        mpirun -np 2 -x VLM_EMU_DEVICES=2 OUT/check_nccl
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${1:-/tmp/vlm-emu}"
mkdir -p "$out/src" "$out/obj"
rm -f "$out"/obj/*.o "$out/check_kernels" "$out/check_backend" "$out/check_nccl" # no stale object survives a failed compile
flags=(-O2 -g -fopenmp -I"$here/include" -I"$root" $(pkg-config --cflags openblas)
  ${EMU_SANITIZE:+-fsanitize=address,undefined -fno-omit-frame-pointer})
mpi_cflags=($(pkg-config --cflags ompi-c))
mpi_libs=($(pkg-config --libs ompi-c))
objs=()
for cu in "$root"/kernels/cuda/*.cu; do
  name="$(basename "$cu" .cu)"
  python3 "$here/cu2cpp.py" "$cu" "$out/src/$name.cpp"
  g++ -std=c++17 -Wall -Wextra -Wno-unknown-pragmas "${flags[@]}" \
    -c "$out/src/$name.cpp" -o "$out/obj/cu_$name.o" &
  objs+=("$out/obj/cu_$name.o")
  if (( $(jobs -r | wc -l) >= 2 )); then wait -n; fi
done
g++ -std=c++17 -Wall -Wextra "${flags[@]}" -c "$here/emu_runtime.cpp" -o "$out/obj/emu_runtime.o"
objs+=("$out/obj/emu_runtime.o")
for c in "$root"/kernels/cpu/*.c "$root"/common/vlm.c "$root"/common/rng.c; do
  name="$(basename "$c" .c)"
  gcc -std=c11 -Wall -Wextra "${flags[@]}" -c "$c" -o "$out/obj/c_$name.o" &
  objs+=("$out/obj/c_$name.o")
  if (( $(jobs -r | wc -l) >= 2 )); then wait -n; fi
done
# the plain-C files of the CUDA backend that use MPI, and the NCCL emulation
mpi_objs=()
for c in "$root"/kernels/cuda/backend_cuda.c "$root"/kernels/cuda/device.c \
  "$root"/kernels/cuda/nccl_comm.c "$here"/emu_nccl.c; do
  name="$(basename "$c" .c)"
  gcc -std=c11 -Wall -Wextra -Werror "${flags[@]}" "${mpi_cflags[@]}" -c "$c" \
    -o "$out/obj/cuc_$name.o" &
  mpi_objs+=("$out/obj/cuc_$name.o")
  if (( $(jobs -r | wc -l) >= 2 )); then wait -n; fi
done
gcc -std=c11 -Wall -Wextra -Werror "${flags[@]}" -c "$root/tests/gpu/check_kernels.c" \
  -o "$out/obj/check_kernels.o" &
gcc -std=c11 -Wall -Wextra -Werror "${flags[@]}" "${mpi_cflags[@]}" \
  -c "$root/tests/gpu/check_backend.c" -o "$out/obj/check_backend.o"
gcc -std=c11 -Wall -Wextra -Werror "${flags[@]}" "${mpi_cflags[@]}" \
  -c "$root/tests/gpu/check_nccl.c" -o "$out/obj/check_nccl.o" &
wait
g++ "${flags[@]}" "${objs[@]}" "$out/obj/check_kernels.o" $(pkg-config --libs openblas) -lm \
  -o "$out/check_kernels"
g++ "${flags[@]}" "${objs[@]}" "${mpi_objs[@]}" "$out/obj/check_backend.o" \
  $(pkg-config --libs openblas) "${mpi_libs[@]}" -lm -o "$out/check_backend"
g++ "${flags[@]}" "${objs[@]}" "${mpi_objs[@]}" "$out/obj/check_nccl.o" \
  $(pkg-config --libs openblas) "${mpi_libs[@]}" -lm -o "$out/check_nccl"
echo "$out/check_kernels"
echo "$out/check_backend"
echo "$out/check_nccl"
