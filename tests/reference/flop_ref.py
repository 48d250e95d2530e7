"""tests/reference/flop_ref.py: an account of the FLOPs vlmtrain reports, built from
the PyTorch reference instead of from vlmtrain's code.

vlmtrain counts 2 N K O per GEMM it runs (forward, and each gradient it computes)
and 4 Tq Tk D H per attention forward (about half of it when causal), twice that
backward. PyTorch's profiler counts the FLOPs of the matrix products and
convolutions the reference (monkey_ref.py) executes. The two differ only where
vlmtrain skips work by design; extra_flops() states each of those places from the
model definition (docs: ../shared/docs/monkey-architecture.md), so that

    profiled_step_flops(reference step) - extra_flops(its micro-batches)

must equal vlmtrain's count of the same step. Used by test_train_steps.py (the
check) and benchmarks/bench_train_step.py (the executed-FLOP rate of PyTorch).
"""
import torch
from torch.profiler import ProfilerActivity, profile

import monkey_ref as mr

# Ops whose FLOPs the profiler counts that are matrix products or the patch
# convolution (its add and mul counts are elementwise work, which vlmtrain does
# not count either).
PRODUCT_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::conv2d")


def profiled_step_flops(trainer, s, samples):
    """Runs trainer.step(s, samples) under the profiler; returns (step result,
    FLOPs of its matrix products and convolutions)."""
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        r = trainer.step(s, samples)
    return r, float(sum(e.flops for e in prof.key_averages() if e.key in PRODUCT_OPS))


def extra_flops(cfg, microbatch):
    """FLOPs the reference executes beyond vlmtrain's count for one micro-batch
    [(tokens, labels, images)], with the resampler trained (Monkey preset):
    - lm_head (forward, input and weight gradients: 3 x 2 H V per row) at every
      position, where vlmtrain evaluates it at the rows with a target only;
    - the last LLM block's attention c_proj and MLP (3 x 2 (H H + 3 H FF) per row)
      at every row, where vlmtrain computes that block's output at the rows with a
      target only; its q projection (3 x 2 H H per row) at the rows before a
      sample's first target, and its attention for those query rows (vlmtrain
      runs it for the tail from the first target on: 12 Tq (T - Tq/2) H counted,
      forward and backward, where the reference computes 12 T^2 H);
    - the masked upper half of every other causal LLM attention (the reference
      computes all T x T scores and their gradients: 12 T^2 H per layer, where
      the causal count credits 6 T^2 H);
    - the resampler's query projection (3 x 2 nq E E) once per view, where
      vlmtrain computes it once per micro-batch (the queries do not depend on
      the view)."""
    H, V, L, FF = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers, cfg.ffn
    E, nq = cfg.output_dim, cfg.n_queries
    extra, views = 0.0, 0
    for toks, labs, imgs in microbatch:
        T = len(toks)
        tgt = (labs[1:] != mr.IGNORE).nonzero()[0]  # rows with a target
        q0 = int(tgt[0]) if len(tgt) else T  # first row of the last block's tail
        Tq = T - q0
        extra += 3.0 * 2.0 * H * V * (T - len(tgt))
        extra += 3.0 * 2.0 * (H * H + 3.0 * H * FF) * (T - len(tgt))
        extra += 3.0 * 2.0 * H * H * q0
        extra += (L - 1) * 6.0 * T * T * H
        extra += 12.0 * T * T * H - 12.0 * Tq * (T - 0.5 * Tq) * H
        views += len(imgs) * (cfg.n_windows + 1)
    if views > 0:
        extra += 3.0 * 2.0 * nq * E * E * (views - 1)
    return extra
