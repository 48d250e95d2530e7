#!/bin/bash
# slurm/scaling.sh: submits a scaling study of vlmtrain to Slurm: for each rank
# count p and each repeat k, one training job (slurm/train.sbatch, started
# fresh: RESUME=none) writing its own run directory STUDY/p<p>-r<k>, then a
# collector job that runs once all of them succeeded (--dependency=afterok)
# and writes STUDY/scaling.txt (the table of `vlmtrain scaling`) and
# STUDY/scaling.png. Each run's RUNDIR/metrics.jsonl and summary.json stay for
# later analysis; STUDY/environment.txt records where and how it ran.
#
#   slurm/scaling.sh [OPTIONS] -- --model MODEL --data DATA.h5 --config TRAIN.json
#
# Strong scaling (the default) keeps the global batch fixed: give a training
# config with train_batch_size. Weak scaling keeps the work per rank fixed:
# give one without train_batch_size (global batch = micro x accumulation x
# ranks) and --weak. Prints the job ids; it does not wait.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
  cat <<'EOF'
usage: slurm/scaling.sh [OPTIONS] -- VLMTRAIN-TRAIN-ARGUMENTS (without --out and --steps)
  --ranks "P1 P2 ..."   rank counts to run [default: "1 2 4 8"]
  --tasks-per-node N    ranks per node; p > N runs on p/N nodes [default: 4]
  --cpus-per-task N     CPUs (OpenMP threads) per rank [default: train.sbatch's]
  --steps N             optimizer steps per run (the first is left out as warm-up) [default: 20]
  --repeats K           runs per rank count [default: 3]
  --weak                weak scaling: efficiency T(p0)/T(p) in the collector
  --out STUDY           study directory [default: scaling-DATE-TIME]
  --shared              do not ask for whole nodes (--exclusive is the default, for clean timings)
  --sbatch "OPTIONS"    more sbatch options for every job (partition, account, time, ...)
Environment: VLMTRAIN (default: vlmtrain in PATH).
EOF
}

ranks="1 2 4 8" tpn=4 cpus="" steps=20 repeats=3 weak="" out="" exclusive=--exclusive extra=""
while [ $# -gt 0 ]; do
  case "$1" in
    --ranks) ranks="$2"; shift 2 ;;
    --tasks-per-node) tpn="$2"; shift 2 ;;
    --cpus-per-task) cpus="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    --weak) weak=--weak; shift ;;
    --out) out="$2"; shift 2 ;;
    --shared) exclusive=""; shift ;;
    --sbatch) extra="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage; exit 0 ;;
    *) echo "slurm/scaling.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [ $# -eq 0 ]; then
  echo "slurm/scaling.sh: give the vlmtrain train arguments after --" >&2
  usage >&2
  exit 2
fi
for a in "$@"; do
  case "$a" in --out|--steps|--resume)
    echo "slurm/scaling.sh: $a is set per run by the script; leave it out" >&2; exit 2 ;;
  esac
done
VLMTRAIN="${VLMTRAIN:-vlmtrain}"
out="${out:-scaling-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
read -r -a extra_args <<<"$extra"
cpus_args=()
[ -n "$cpus" ] && cpus_args=(--cpus-per-task="$cpus")

{
  echo "date: $(date '+%F %T %z')"
  echo "submitted from: $(hostname) ($(uname -srm))"
  echo "slurm: $(sbatch --version 2>&1)"
  echo "vlmtrain: $VLMTRAIN"
  echo "ranks: $ranks; tasks per node: $tpn; cpus per task: ${cpus:-script default}; steps: $steps; repeats: $repeats; ${weak:-strong} scaling"
  echo "sbatch options: $exclusive $extra"
  printf 'train arguments:'; printf ' %q' "$@"; echo
} >"$out/environment.txt"

ids=() dirs=()
for p in $ranks; do
  if [ "$p" -le "$tpn" ]; then
    nodes=1 per_node="$p"
  elif [ $((p % tpn)) -eq 0 ]; then
    nodes=$((p / tpn)) per_node="$tpn"
  else
    echo "slurm/scaling.sh: $p ranks is not a multiple of --tasks-per-node $tpn" >&2
    exit 2
  fi
  for k in $(seq 1 "$repeats"); do
    run="$out/p$p-r$k"
    id=$(RESUME=none VLMTRAIN="$VLMTRAIN" sbatch --parsable --job-name="vlmscale-p$p-r$k" \
      --nodes="$nodes" --ntasks-per-node="$per_node" --ntasks="$p" "${cpus_args[@]}" \
      --output="$run.out" --open-mode=truncate --no-requeue $exclusive "${extra_args[@]}" \
      "$here/train.sbatch" "$@" --out "$run" --steps "$steps")
    id="${id%%;*}"
    ids+=("$id") dirs+=("$run")
    echo "submitted $p rank(s), run $k: job $id -> $run"
  done
done

deps=$(IFS=:; echo "${ids[*]}")
printf -v collect '%q scaling' "$VLMTRAIN"
for d in "${dirs[@]}"; do printf -v collect '%s %q' "$collect" "$d"; done
printf -v collect '%s %s --plot %q > %q' "$collect" "$weak" "$out/scaling.png" "$out/scaling.txt"
cid=$(sbatch --parsable --job-name=vlmscale-collect --dependency="afterok:$deps" --kill-on-invalid-dep=yes \
  --nodes=1 --ntasks=1 --cpus-per-task=1 --output="$out/collect.out" "${extra_args[@]}" \
  --wrap="$collect && cat $(printf '%q' "$out/scaling.txt")")
cid="${cid%%;*}"
echo "submitted the collector: job $cid (after $deps) -> $out/scaling.txt, $out/scaling.png"
echo "$cid" >"$out/collector.jobid"
