#!/usr/bin/env bash
# tests/gpu/emu/build.sh [OUT_DIR]: builds check_kernels against the CPU emulation of
# CUDA (include/emu_cuda.h, emu_runtime.cpp): the unchanged kernels/cuda/*.cu, turned
# into C++ by cu2cpp.py, plus the CPU kernels they are compared with. Needs only g++,
# python3 and OpenBLAS. Prints the path of the program. NCCL is not emulated.
# Usage: bash tests/gpu/emu/build.sh /tmp/vlm-emu && /tmp/vlm-emu/check_kernels
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${1:-/tmp/vlm-emu}"
mkdir -p "$out/src" "$out/obj"
flags=(-O2 -g -fopenmp -I"$here/include" -I"$root" $(pkg-config --cflags openblas)
  ${EMU_SANITIZE:+-fsanitize=address,undefined -fno-omit-frame-pointer})
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
for c in "$root"/kernels/cpu/*.c "$root"/common/vlm.c "$root"/common/rng.c \
         "$root"/tests/gpu/check_kernels.c; do
  name="$(basename "$c" .c)"
  gcc -std=c11 -Wall -Wextra "${flags[@]}" -c "$c" -o "$out/obj/c_$name.o" &
  objs+=("$out/obj/c_$name.o")
  if (( $(jobs -r | wc -l) >= 2 )); then wait -n; fi
done
wait
g++ "${flags[@]}" "${objs[@]}" $(pkg-config --libs openblas) -lm -o "$out/check_kernels"
echo "$out/check_kernels"
