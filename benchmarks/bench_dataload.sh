#!/usr/bin/env bash
# benchmarks/bench_dataload.sh: the independent and collective modes of the
# parallel dataset reader (benchmarks/bench_dataload.c) on 1, 2 and 4 ranks, on
# two synthetic datasets of 256 samples: configs/small.json (448x448 images,
# 180..185 filler tokens) and configs/tiny.json (112x112, 160..165 filler: 185
# would exceed tiny's seq_length). A program, not a test. Ends with one table row
# per (config, ranks): MB/s and samples/s of each mode (and of the trainer's
# present per-sample path) at the median and, in brackets, the best repetition,
# and the ratio collective / independent of both (> 1: collective is faster).
#
# Usage: bash benchmarks/bench_dataload.sh [BUILD_DIR (build)] [WORK_DIR (/tmp/vlm-bench-dataload)]
# Environment: REPS (31), PASSES (2), RANKS ("1 2 4"), MPIRUN_ARGS (extra mpirun
# options, e.g. "--mca io romio321" to use ROMIO instead of Open MPI's default OMPIO).
# The files are read from the page cache (written just before; a warm-up pass
# each): the numbers measure the readers' own cost, not the disk.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$(cd "${1:-$here/build}" && pwd)"
work="${2:-/tmp/vlm-bench-dataload}"
reps="${REPS:-31}"
passes="${PASSES:-2}"
ranks="${RANKS:-1 2 4}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
mkdir -p "$work"
log="$work/bench_dataload.log"
: > "$log"

make_data() { # CONFIG FILLER_MIN FILLER_MAX OUT
  "$build/vlmtrain" mkdata --synthetic --config "$here/configs/$1.json" --out "$4" \
    --samples 256 --filler-min "$2" --filler-max "$3"
}
make_data small 180 185 "$work/small.h5"
make_data tiny 160 165 "$work/tiny.h5"

echo "machine: $(getconf _NPROCESSORS_ONLN) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $(mpirun --version | head -1)" | tee -a "$log"
for cfg in small tiny; do
  for n in $ranks; do
    echo "== $cfg, $n rank(s) ==" | tee -a "$log"
    # shellcheck disable=SC2086
    mpirun -np "$n" --oversubscribe ${MPIRUN_ARGS:-} "$build/benchmarks/bench_dataload" \
      "$here/configs/$cfg.json" "$work/$cfg.h5" --reps "$reps" --passes "$passes" | tee -a "$log"
  done
done

echo
echo "| config (image) | ranks | independent MB/s, samples/s | collective MB/s, samples/s | per-sample MB/s, samples/s | collective / independent |"
echo "|---|---|---|---|---|---|"
awk '
  /^RESULT/ {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    key = v["image_size"] "|" v["ranks"]
    if ("mode" in v) cell[key, v["mode"]] = sprintf("%.0f (%.0f), %.0f (%.0f)", v["mb_s"], v["best_mb_s"], v["samples_s"], v["best_samples_s"])
    else { r[key] = sprintf("%.2f (%.2f)", v["ratio_collective_over_independent"], v["best_ratio_collective_over_independent"]); order[++n] = key; img[key] = v["image_size"]; rk[key] = v["ranks"] }
    delete v
  }
  END {
    for (k = 1; k <= n; k++) {
      key = order[k]
      name = img[key] == 448 ? "small (448)" : (img[key] == 112 ? "tiny (112)" : img[key])
      printf "| %s | %s | %s | %s | %s | %s |\n", name, rk[key], cell[key, "independent"], cell[key, "collective"], cell[key, "per-sample"], r[key]
    }
  }' "$log"
