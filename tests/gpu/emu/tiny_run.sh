#!/usr/bin/env bash
# tests/gpu/emu/tiny_run.sh VLMTRAIN [TRAIN OPTIONS...]: a tiny end-to-end run of a
# vlmtrain program (e.g. the one tests/gpu/emu/build_vlmtrain.sh builds): initialises the
# tiny model (configs/tiny.json), writes a 32-sample synthetic dataset and trains
# VLM_TINY_STEPS (default 3) steps with ZeRO-3 on VLM_TINY_RANKS (default 2) MPI ranks,
# passing the extra options to `train` (e.g. `--device cuda`: ZeRO-3 through the
# emulated NCCL).
# Under the CUDA emulation every rank needs its own emulated GPU: this script exports
# VLM_EMU_DEVICES=<ranks> to the ranks (ignored by a real CUDA or CPU-only build).
# Work folder: VLM_TINY_DIR (default: a fresh temporary folder, removed on success).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
vlm="$1"
shift
ranks="${VLM_TINY_RANKS:-2}"
steps="${VLM_TINY_STEPS:-3}"
dir="${VLM_TINY_DIR:-$(mktemp -d)}"
mkdir -p "$dir"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" VLM_EMU_DEVICES="$ranks"
"$vlm" init --config "$root/configs/tiny.json" --out "$dir/model" --seed 1
"$vlm" mkdata --synthetic --config "$root/configs/tiny.json" --out "$dir/data.h5" --samples 32 \
  --seed 2
mpirun --oversubscribe -np "$ranks" -x VLM_EMU_DEVICES -x OMP_NUM_THREADS "$vlm" train \
  --model "$dir/model" --data "$dir/data.h5" --config "$root/configs/train-tiny.json" \
  --out "$dir/run" --steps "$steps" "$@"
test -s "$dir/run/metrics.jsonl" || { echo "tiny_run.sh: no metrics.jsonl written" >&2; exit 1; }
echo "tiny_run.sh: $steps steps on $ranks ranks trained; last metrics line:"
tail -n 1 "$dir/run/metrics.jsonl"
[ -n "${VLM_TINY_DIR:-}" ] || rm -rf "$dir"
