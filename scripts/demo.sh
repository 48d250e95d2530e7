#!/usr/bin/env bash
# scripts/demo.sh: the main job. Installs the Debian packages, builds vlmtrain,
# initialises the tiny Monkey model (configs/tiny.json), makes the synthetic
# image-question-answer dataset and trains on it until the loss has clearly
# fallen (a few minutes on 2 cores). Output: run-demo/ (model, data, metrics).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/install-deps.sh"
bash "$here/scripts/build.sh" "$here/build" > "$here/build.log" 2>&1 || { tail -50 "$here/build.log"; exit 1; }
out="${VLM_DEMO_DIR:-$here/run-demo}"
rm -rf "$out" && mkdir -p "$out"
vlm="$here/build/vlmtrain"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
"$vlm" init --config "$here/configs/tiny.json" --out "$out/model" --seed 1
"$vlm" mkdata --synthetic --config "$here/configs/tiny.json" --out "$out/data.h5" --samples 512 --seed 2
"$vlm" train --model "$out/model" --data "$out/data.h5" --config "$here/configs/train-tiny.json" \
  --out "$out/run" --audit
/usr/bin/python3 "$here/scripts/summarize_run.py" "$out/run/metrics.jsonl"
