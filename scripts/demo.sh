#!/usr/bin/env bash
# scripts/demo.sh: the main job. Installs the Debian packages, builds vlmtrain,
# initialises the tiny Monkey model (configs/tiny.json), makes the synthetic
# image-question-answer dataset and trains on it with ZeRO-3 on 2 MPI ranks (one
# shard group of 2) until the loss has clearly fallen (a few minutes on 2
# cores). Output: run-demo/ (model, data, metrics). VLM_DEMO_RANKS=N changes the
# rank count.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/install-deps.sh"
bash "$here/scripts/build.sh" "$here/build" > "$here/build.log" 2>&1 || { tail -50 "$here/build.log"; exit 1; }
out="${VLM_DEMO_DIR:-$here/run-demo}"
rm -rf "$out" && mkdir -p "$out"
vlm="$here/build/vlmtrain"
ranks="${VLM_DEMO_RANKS:-2}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / ranks > 0 ? $(nproc) / ranks : 1 ))}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 # Open MPI refuses root otherwise
"$vlm" init --config "$here/configs/tiny.json" --out "$out/model" --seed 1
"$vlm" mkdata --synthetic --config "$here/configs/tiny.json" --out "$out/data.h5" --samples 512 --seed 2
mpirun --oversubscribe -np "$ranks" "$vlm" train --model "$out/model" --data "$out/data.h5" \
  --config "$here/configs/train-tiny.json" --out "$out/run" --audit
/usr/bin/python3 "$here/scripts/summarize_run.py" "$out/run/metrics.jsonl"
