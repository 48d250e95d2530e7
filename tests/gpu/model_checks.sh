#!/usr/bin/env bash
# tests/gpu/model_checks.sh VLMTRAIN OUT_DIR [--quick]: the model-level checks of the
# CUDA backend, run by tests/gpu/run.sh on a GPU machine (and, with --quick, by CI
# against the CPU emulation of CUDA, tests/gpu/emu/build_vlmtrain.sh, where they check
# the integration logic, not the GPU).
#   1. parity: the tiny model, 20 training steps with ZeRO-3 on one rank, once with
#      --device cpu and once with --device cuda, same weights, data and config (fp32):
#      every step's loss and gradient norm, and every final weight, must agree
#      (tolerances below; step 1's loss is the forward on identical weights, its
#      gradient norm the backward).
#   1b. ranks (only when VLM_CHECK_RANKS >= 2): the same 20 steps with a global batch of
#      6 samples, ZeRO-3 over VLM_CHECK_RANKS ranks (mpirun; --device cuda: NCCL
#      collectives) against the same run with --device cpu (MPI collectives) on as
#      many ranks, and against the same global batch on one CPU rank; the fp32
#      tolerance of check 1, and equal gather / reduce-scatter byte counts. Under the
#      emulation, export VLM_EMU_DEVICES (>= ranks) too.
#   2. bf16: the same run with bf16.enabled on the GPU (GEMM operands in bf16, fp32
#      accumulation); losses and gradient norms must follow the fp32 CPU run within
#      bf16 tolerance. With VLM_CHECK_RANKS >= 2 also on that many ranks, with bf16
#      gathers (bf16.enabled) and bf16 gradient reductions (communication_data_type
#      "bf16"), against the fp32 CPU run on as many ranks: bf16 tolerance, and exactly
#      half the fp32 run's gather and reduce-scatter bytes.
#   3. throughput (skipped with --quick, as under the emulation): the small config and the medium config (one
#      ViT block and one LLM block at Monkey's widths, 2048-token samples with a
#      896 x 896 image, 4 windows + global view), bf16, 8 steps each: tokens/s and
#      MFU = the trainer's counted FLOP/s over the GPU's bf16 dense peak
#      (VLM_GPU_PEAK_TFLOPS overrides the table below).
# Exit status 0 when every check passes, 1 otherwise.
set -uo pipefail
vlm="${1:?usage: model_checks.sh VLMTRAIN OUT_DIR [--quick]}"
out="${2:?usage: model_checks.sh VLMTRAIN OUT_DIR [--quick]}"
quick=0
[ "${3:-}" = "--quick" ] && quick=1
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
py="$(command -v /usr/bin/python3 || command -v python3)"
mkdir -p "$out"
work="$out/model-checks"
rm -rf "$work" && mkdir -p "$work"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
status=0
say() { printf '\n-- %s --\n' "$*"; }

# A training config: $1 = file, $2 = steps, $3 = bf16 (true|false), $4 = micro-batch,
# $5 = global batch (train_batch_size; default: micro-batch x ranks), $6 =
# communication_data_type (default: not given, i.e. fp32)
train_json() {
  cat >"$1" <<EOF
{
  "train_micro_batch_size_per_gpu": $4, "gradient_accumulation_steps": 1,${5:+ \"train_batch_size\": $5,}${6:+ \"communication_data_type\": \"$6\",}
  "gradient_clipping": 1.0, "steps_per_print": 5, "train_steps": $2, "seed": 7,
  "optimizer": {"type": "AdamW", "params": {"lr": 2e-3, "betas": [0.9, 0.95], "eps": 1e-8,
                "weight_decay": 0.1}},
  "scheduler": {"type": "cosine", "params": {"warmup_num_steps": 2}},
  "trainable": "monkey",
  "param_groups": [
    {"name": "no_decay", "patterns": ["*bias", "*lora_scale", "transformer.visual.*ln_*"],
     "weight_decay": 0.0},
    {"name": "default", "patterns": ["*"]}],
  "recompute": {"vit": true, "llm": false},
  "data": {"shuffle": false},
  "checkpoint": {"every_steps": 0},
  "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 100},
  "bf16": {"enabled": $3}
}
EOF
}

# Compares two runs: metrics.jsonl losses / grad norms and final weights.
# $1 = run A, $2 = run B, $3 = relative tolerance, $4 = label, $5 = weights too (1|0),
# $6 = smallest largest-loss-difference required (0: none; bf16 must change the losses,
# or the run did not compute in bf16)
compare() {
  "$py" - "$1" "$2" "$3" "$4" "$5" "${6:-0}" <<'EOF'
import json, struct, sys
a, b, tol, label, weights = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
min_diff = float(sys.argv[6])
def metrics(run):
    return [json.loads(l) for l in open(run + "/metrics.jsonl") if '"loss"' in l]
ma, mb = metrics(a), metrics(b)
ok = len(ma) == len(mb) and len(ma) > 0
worst = {"loss": 0.0, "grad_norm": 0.0}
for x, y in zip(ma, mb):
    for k in worst:
        d = abs(x[k] - y[k]) / max(abs(x[k]), 1e-12)
        worst[k] = max(worst[k], d)
print("%s: %d steps; largest relative difference: loss %.2e, grad_norm %.2e (tolerance %.0e)"
      % (label, len(ma), worst["loss"], worst["grad_norm"], tol))
print("%s: step 1 loss %.7f vs %.7f, last loss %.7f vs %.7f" % (
    label, ma[0]["loss"], mb[0]["loss"], ma[-1]["loss"], mb[-1]["loss"]))
ok = ok and worst["loss"] <= tol and worst["grad_norm"] <= tol
if min_diff > 0:
    print("%s: the losses must also differ by at least %.0e somewhere (they do%s)"
          % (label, min_diff, "" if worst["loss"] >= min_diff else " NOT"))
    ok = ok and worst["loss"] >= min_diff
if weights:
    def tensors(run):
        with open(run + "/final/model.safetensors", "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            head = json.loads(f.read(n))
            data = f.read()
        out = {}
        for k, v in head.items():
            if k == "__metadata__":
                continue
            assert v["dtype"] == "F32", (k, v["dtype"])
            lo, hi = v["data_offsets"]
            out[k] = struct.unpack("<%df" % ((hi - lo) // 4), data[lo:hi])
        return out
    ta, tb = tensors(a), tensors(b)
    ok = ok and set(ta) == set(tb)
    worst_w, name = 0.0, ""
    for k in ta:
        scale = max(max(abs(x) for x in ta[k]), 1e-6)
        d = max(abs(x - y) for x, y in zip(ta[k], tb[k])) / scale
        if d > worst_w:
            worst_w, name = d, k
    print("%s: %d final tensors; largest difference relative to the tensor's max: %.2e (%s)"
          % (label, len(ta), worst_w, name))
    ok = ok and worst_w <= tol
print("%s: %s" % (label, "PASS" if ok else "FAIL"))
sys.exit(0 if ok else 1)
EOF
}

say "tiny model and data"
"$vlm" init --config "$root/configs/tiny.json" --out "$work/tiny" --seed 1 >"$work/init.log" 2>&1 &&
  "$vlm" mkdata --synthetic --config "$root/configs/tiny.json" --out "$work/tiny.h5" \
    --samples 96 --seed 2 --multi-image-every 3 >"$work/mkdata.log" 2>&1 ||
  { cat "$work/init.log" "$work/mkdata.log"; echo "model_checks: set-up failed"; exit 1; }

say "1. parity: 20 steps, ZeRO-3 on one rank, --device cpu vs --device cuda (fp32)"
train_json "$work/fp32.json" 20 false 3
for dev in cpu cuda; do
  "$vlm" train --device "$dev" --model "$work/tiny" --data "$work/tiny.h5" \
    --config "$work/fp32.json" --out "$work/run-$dev" >"$work/train-$dev.log" 2>&1 ||
    { tail -n 20 "$work/train-$dev.log"; echo "model_checks: --device $dev failed"; status=1; }
done
# fp32 on both sides; the GPU sums in other orders (tiled GEMMs, two-stage
# reductions), so agreement is to fp32 rounding amplified over 20 Adam steps.
[ "$status" -eq 0 ] && { compare "$work/run-cpu" "$work/run-cuda" 2e-3 "parity fp32" 1 || status=1; }

ranks="${VLM_CHECK_RANKS:-1}"
if [ "$ranks" -ge 2 ] 2>/dev/null; then
  say "1b. ranks: 20 steps, ZeRO-3 on $ranks ranks, --device cuda (NCCL) vs --device cpu (MPI), and vs one CPU rank"
  train_json "$work/ranks.json" 20 false 3 6
  mpi=(mpirun --oversubscribe -np "$ranks")
  [ -n "${VLM_EMU_DEVICES:-}" ] && mpi+=(-x VLM_EMU_DEVICES)
  rstatus=0
  for run in "cpu $ranks" "cuda $ranks" "cpu 1"; do
    read -r dev n <<<"$run"
    launch=("${mpi[@]}")
    [ "$n" -eq 1 ] && launch=()
    "${launch[@]}" "$vlm" train --device "$dev" --model "$work/tiny" --data "$work/tiny.h5" \
      --config "$work/ranks.json" --out "$work/run-$dev-${n}r" </dev/null >"$work/train-$dev-${n}r.log" 2>&1 ||
      { tail -n 20 "$work/train-$dev-${n}r.log"; echo "model_checks: --device $dev on $n rank(s) failed"; rstatus=1; }
  done
  if [ "$rstatus" -eq 0 ]; then
    compare "$work/run-cpu-${ranks}r" "$work/run-cuda-${ranks}r" 2e-3 \
      "parity fp32 on $ranks ranks, cpu vs cuda" 1 || rstatus=1
    compare "$work/run-cpu-1r" "$work/run-cuda-${ranks}r" 2e-3 \
      "parity fp32, cuda on $ranks ranks vs cpu on 1 rank" 1 || rstatus=1
    # the collectives ran on both paths, with the same byte counts
    "$py" - "$work/run-cpu-${ranks}r/metrics.jsonl" "$work/run-cuda-${ranks}r/metrics.jsonl" <<'EOF' || rstatus=1
import json, sys
def total(p, key):
    return sum(json.loads(l).get(key, 0) for l in open(p) if '"loss"' in l)
ok = True
for key in ("bytes_allgather", "bytes_reduce_scatter"):
    a, b = total(sys.argv[1], key), total(sys.argv[2], key)
    print("parity bytes on the ranks: %s over the run: cpu %d, cuda %d" % (key, a, b))
    ok = ok and a == b and a > 0
print("parity bytes on the ranks: %s" % ("PASS" if ok else "FAIL"))
sys.exit(0 if ok else 1)
EOF
  fi
  [ "$rstatus" -eq 0 ] || status=1
fi

say "2. bf16: the same 20 steps with bf16.enabled on the GPU"
train_json "$work/bf16.json" 20 true 3
if "$vlm" train --device cuda --model "$work/tiny" --data "$work/tiny.h5" \
    --config "$work/bf16.json" --out "$work/run-bf16" >"$work/train-bf16.log" 2>&1; then
  # bf16 keeps 8 mantissa bits: losses within a few per cent of fp32.
  compare "$work/run-cpu" "$work/run-bf16" 5e-2 "bf16 vs fp32" 0 1e-6 || status=1
else
  tail -n 20 "$work/train-bf16.log"
  echo "model_checks: bf16 run failed"
  status=1
fi
if [ "$ranks" -ge 2 ] 2>/dev/null; then
  train_json "$work/ranks-bf16.json" 20 true 3 6 bf16
  if "${mpi[@]}" "$vlm" train --device cuda --model "$work/tiny" --data "$work/tiny.h5" \
      --config "$work/ranks-bf16.json" --out "$work/run-bf16-${ranks}r" </dev/null \
      >"$work/train-bf16-${ranks}r.log" 2>&1 && [ -d "$work/run-cpu-${ranks}r" ]; then
    compare "$work/run-cpu-${ranks}r" "$work/run-bf16-${ranks}r" 5e-2 \
      "bf16 gathers and reductions on $ranks ranks vs fp32" 0 1e-6 || status=1
    "$py" - "$work/run-cpu-${ranks}r/metrics.jsonl" "$work/run-bf16-${ranks}r/metrics.jsonl" <<'EOF' || status=1
import json, sys
def total(p, key):
    return sum(json.loads(l).get(key, 0) for l in open(p) if '"loss"' in l)
ok = True
for key in ("bytes_allgather", "bytes_reduce_scatter"):
    a, b = total(sys.argv[1], key), total(sys.argv[2], key)
    print("bf16 bytes on the ranks: %s over the run: fp32 cpu %d, bf16 cuda %d" % (key, a, b))
    ok = ok and a > 0 and 2 * b == a
print("bf16 bytes on the ranks: %s" % ("PASS" if ok else "FAIL"))
sys.exit(0 if ok else 1)
EOF
  else
    tail -n 20 "$work/train-bf16-${ranks}r.log"
    echo "model_checks: bf16 run on $ranks ranks failed (or the fp32 cpu run on $ranks ranks is missing)"
    status=1
  fi
fi

if [ "$quick" -eq 0 ]; then
  say "3. throughput: small and medium, bf16, 8 steps"
  peak="${VLM_GPU_PEAK_TFLOPS:-}"
  if [ -z "$peak" ]; then
    name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
    case "$name" in
      *H200* | *H100*SXM* | *H100\ 80GB\ HBM3*) peak=989.4 ;; # dense bf16, SXM
      *H100*) peak=756.0 ;;                                   # PCIe
      *A100*) peak=312.0 ;;
      *) peak=0 ;;
    esac
    echo "GPU: ${name:-unknown}; bf16 dense peak ${peak} TFLOP/s (VLM_GPU_PEAK_TFLOPS overrides)"
  fi
  for cfg in small medium; do
    case "$cfg" in
      small) fmin=180 fmax=185 mb=4 ;;
      medium) fmin=745 fmax=750 mb=1 ;;
    esac
    "$vlm" init --config "$root/configs/$cfg.json" --out "$work/$cfg" --seed 1 \
      >"$work/init-$cfg.log" 2>&1 &&
      "$vlm" mkdata --synthetic --config "$root/configs/$cfg.json" --out "$work/$cfg.h5" \
        --samples 64 --seed 3 --filler-min $fmin --filler-max $fmax >"$work/mkdata-$cfg.log" 2>&1 ||
      { tail -n 5 "$work/init-$cfg.log" "$work/mkdata-$cfg.log"; status=1; continue; }
    train_json "$work/$cfg-bench.json" 8 true $mb
    "$py" - "$work/$cfg-bench.json" <<'EOF'
import json, sys
p = sys.argv[1]; t = json.load(open(p)); t["recompute"] = {"vit": False, "llm": False}
json.dump(t, open(p, "w"), indent=1)
EOF
    if "$vlm" train --device cuda --model "$work/$cfg" --data "$work/$cfg.h5" \
        --config "$work/$cfg-bench.json" --out "$work/run-$cfg" >"$work/train-$cfg.log" 2>&1; then
      "$py" - "$work/run-$cfg/metrics.jsonl" "$cfg" "$peak" <<'EOF'
import json, statistics, sys
m = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l][1:]  # first step: warm-up
peak = float(sys.argv[3])
st = statistics.median(x["step_time"] for x in m)
tok = statistics.median(x["tokens"] / x["step_time"] for x in m)
gf = statistics.median(x["gflops"] for x in m)
mfu = 100.0 * gf / (peak * 1e3) if peak > 0 else float("nan")
print("%s: %d timed steps, step %.4f s (median), %.0f tokens/s, %.1f TFLOP/s counted, MFU %.1f%%"
      % (sys.argv[2], len(m), st, tok, gf / 1e3, mfu))
EOF
    else
      tail -n 20 "$work/train-$cfg.log"
      echo "model_checks: $cfg throughput run failed"
      status=1
    fi
  done
fi

echo
echo "model_checks: $([ $status -eq 0 ] && echo 'all passed' || echo 'FAILED')"
exit $status
