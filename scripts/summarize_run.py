#!/usr/bin/python3
"""scripts/summarize_run.py METRICS.jsonl: prints how the loss moved during a
run (mean of the first and last tenth of the steps) and the throughput."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
if not rows:
    sys.exit("no steps in " + sys.argv[1])
k = max(1, len(rows) // 10)
first = sum(r["loss"] for r in rows[:k]) / k
last = sum(r["loss"] for r in rows[-k:]) / k
tps = sorted(r["tokens_per_s"] for r in rows[1:] or rows)[len(rows[1:] or rows) // 2]
gf = sorted(r["gflops"] for r in rows[1:] or rows)[len(rows[1:] or rows) // 2]
print(f"summary: {len(rows)} steps; mean loss of the first {k} steps {first:.4f}, "
      f"of the last {k} steps {last:.4f} ({100 * (1 - last / first):.0f}% lower); "
      f"median {tps:.0f} tokens/s, {gf:.1f} GFLOP/s")
