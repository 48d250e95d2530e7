# tests/reference/test_model_grads.py: the C model's loss and gradients of one
# micro-batch against the independent PyTorch reference (monkey_ref.py, float64).
#
# First the reference checks itself (parameter counts of the released model,
# file formats, attention layouts against torch's own MultiheadAttention, RoPE
# relativity, finite differences). Then, for each tiny model variant (plain
# tiny; 84-px windows so the resampler's pos_embed is interpolated; width ==
# output_dim so kv_proj is absent), it writes random weights (LoRA B != 0, scale
# != 1) as a HF directory and a dataset, and runs
#     $VLM_DUMP_GRADS MODEL_DIR DATA.h5 TRAIN.json OUT.h5
# with the "full" and "monkey" trainable presets and recompute off/on. OUT.h5
# must hold /loss (float64), /n_targets (int64) and /grads/<name> (float32, the
# parameter's shape) for exactly the trainable parameters.
#
# Usage: test_model_grads.py [--reference-only]   (prints "N passed, M failed")
import json
import os
import sys

import numpy as np
import torch

import testlib as tl
from testlib import mr

LOSS_TOL = 1e-5   # relative error of the micro-batch loss
GRAD_TOL = 1e-4   # max|g_c - g_ref| / max(max|g_ref|, 1e-6), per parameter
# A one-element tensor (lora_scale) has no other entries to set the scale: its
# gradient is one sum over every token and channel, sum(u * dY), which can cancel
# to near 0 by chance (seen: 4.5e-5 from terms summing to 0.57 in |.|), where no
# fp32 sum can give 1e-4 relative. Its error is judged relative to
# max(|g_ref|, SCALAR_COND * sum|u * dY|) instead.
SCALAR_COND = 1e-2
MICRO_BATCH = 3


# ----------------------------------------------------------------------------
# Self-checks of the reference
# ----------------------------------------------------------------------------
def check_param_counts(C):
    cfg = mr.MonkeyConfig.load(os.path.join(tl.SOURCE_DIR, "configs", "monkey.json"))
    shapes = mr.param_shapes(cfg)
    parts = {}
    for name, shape in shapes:
        parts[mr.part_of(name)] = parts.get(mr.part_of(name), 0) + mr.numel(shape)
    expect = {"vit_trunk": 1842770688, "attn_pool": 76054528, "post": 16785408,
              "vit_lora": 51118656, "llm": 7721324544}
    total = sum(parts.values())
    detail = ", ".join("%s %d" % (k, parts.get(k, 0)) for k in expect)
    C.check("monkey.json: parameter counts per part", parts == expect, detail)
    C.check("monkey.json: total 9,708,053,824", total == 9708053824, "total %d" % total)
    names = [n for n, _ in shapes]
    b0 = "transformer.visual.transformer.resblocks.0."
    per_block_lora = sum(mr.numel(s) for n, s in shapes if n.startswith(b0) and any(
        a in n for a in (".attn.in_proj_lora.0.", ".attn.out_proj_lora.0.", ".mlp_lora.0.")))
    C.check("monkey.json: LoRA per block and window 266,243, names unique",
            per_block_lora == 266243 and len(set(names)) == len(names),
            "%d per block-window, %d tensors" % (per_block_lora, len(names)))
    llm = mr.MonkeyConfig(tl.tiny_config_dict(width=64))
    has_kv = any(n.endswith("kv_proj.weight") for n, _ in mr.param_shapes(llm))
    C.check("width == output_dim: no kv_proj tensor", not has_kv)


def check_formats(C, wd):
    rng = np.random.default_rng(0)
    t = {"a.weight": rng.normal(size=(3, 5)).astype(np.float32),
         "b": np.array([1.0, -2.5, 3e-3], np.float32)}
    p = os.path.join(wd, "rt.safetensors")
    mr.save_safetensors(p, t)
    back = mr.load_safetensors(p)
    ok = all(np.array_equal(back[k], t[k]) for k in t) and list(back) == list(t)
    mr.save_safetensors(p, t, "BF16")
    bf = mr.load_safetensors(p)
    ok_bf = all(np.abs(bf[k] - t[k]).max() <= 2 ** -8 * np.abs(t[k]).max() for k in t)
    mr.save_safetensors(p, t, "F16")
    hf = mr.load_safetensors(p)
    ok_hf = all(np.abs(hf[k] - t[k]).max() <= 2 ** -10 * np.abs(t[k]).max() for k in t)
    with open(p, "rb") as f:
        hlen = int.from_bytes(f.read(8), "little")
    C.check("safetensors round trip F32 exact, BF16/F16 rounded, header 8-aligned",
            ok and ok_bf and ok_hf and hlen % 8 == 0)
    cfg = mr.MonkeyConfig(tl.tiny_config_dict())
    s = tl.make_samples(cfg, 5, 4, text_only_at=3)
    dp = os.path.join(wd, "rt.h5")
    mr.write_dataset(dp, s, cfg.image_size)
    r = mr.read_dataset(dp)
    ok = len(r) == 4 and all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
                             and np.array_equal(a[2], b[2]) for a, b in zip(s, r))
    C.check("dataset round trip (h5py)", ok)


def check_layouts(C):
    """The reference's attention layouts against torch's own MultiheadAttention."""
    torch.manual_seed(0)
    cfg = mr.MonkeyConfig(tl.tiny_config_dict(window_size=84, image_size=168))
    m = mr.MonkeyRef(cfg, mr.random_weights(cfg, 3))
    p, ap = m.p, "transformer.visual.attn_pool."
    E = cfg.output_dim
    x = torch.randn(cfg.n_patches, cfg.width, dtype=torch.float64)
    with torch.no_grad():
        ours = m.resampler(x)
        kv = mr.layer_norm(x @ p[ap + "kv_proj.weight"].t(), p[ap + "ln_kv.weight"],
                           p[ap + "ln_kv.bias"])
        q = mr.layer_norm(p[ap + "query"], p[ap + "ln_q.weight"], p[ap + "ln_q.bias"]) \
            + p[ap + "pos_embed"]
        k = kv + mr.get_abs_pos(p[ap + "pos_embed"], kv.shape[0])
        ref, _ = F_mha(q[:, None], k[:, None], kv[:, None], E, cfg.resampler_heads,
                       p[ap + "attn.in_proj_weight"], p[ap + "attn.in_proj_bias"],
                       p[ap + "attn.out_proj.weight"], p[ap + "attn.out_proj.bias"])
    err = float((ours - ref[:, 0]).abs().max())
    C.check("resampler attention == F.multi_head_attention_forward", err < 1e-12, "%.1e" % err)

    # ViT in_proj is grouped per head [q_h|k_h|v_h]: regroup to [Wq;Wk;Wv] for torch.
    W, h, d = cfg.width, cfg.heads, cfg.vit_head_dim
    b = "transformer.visual.transformer.resblocks.0."
    idx = torch.arange(3 * W).reshape(h, 3, d).permute(1, 0, 2).reshape(-1)
    y = torch.randn(7, W, dtype=torch.float64)
    with torch.no_grad():
        qkv = torch.nn.functional.linear(y, p[b + "attn.in_proj.weight"], p[b + "attn.in_proj.bias"])
        qkv = qkv.reshape(7, h, 3 * d)
        ctx = mr.attention(qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:], causal=False)
        ours = torch.nn.functional.linear(ctx, p[b + "attn.out_proj.weight"], p[b + "attn.out_proj.bias"])
        ref, _ = F_mha(y[:, None], y[:, None], y[:, None], W, h,
                       p[b + "attn.in_proj.weight"][idx], p[b + "attn.in_proj.bias"][idx],
                       p[b + "attn.out_proj.weight"], p[b + "attn.out_proj.bias"])
    err = float((ours - ref[:, 0]).abs().max())
    C.check("ViT per-head [q|k|v] attention == regrouped MultiheadAttention", err < 1e-12,
            "%.1e" % err)

    # RoPE: q.k after rotation depends on the position difference only.
    T = 40
    cos, sin = mr.rope_tables(cfg, T, torch.float64)
    qv = torch.randn(1, 1, cfg.head_dim, dtype=torch.float64).expand(T, 1, -1)
    kv_ = torch.randn(1, 1, cfg.head_dim, dtype=torch.float64).expand(T, 1, -1)
    rq, rk = mr.apply_rope(qv, cos, sin)[:, 0], mr.apply_rope(kv_, cos, sin)[:, 0]
    d1 = float(rq[10] @ rk[3])
    d2 = float(rq[30] @ rk[23])
    d0 = float(qv[0, 0] @ kv_[0, 0])
    C.check("RoPE: dot products depend on relative position only",
            abs(d1 - d2) < 1e-5 * (1 + abs(d1)) and abs(float(rq[5] @ rk[5]) - d0) < 1e-5,
            "%.6f vs %.6f" % (d1, d2))

    # get_abs_pos: identity when grids agree; a constant table stays constant.
    tab = torch.randn(16, 5, dtype=torch.float64)
    const = torch.ones(256, 3, dtype=torch.float64) * 0.7
    ok = torch.equal(mr.get_abs_pos(tab, 16), tab) and \
        float((mr.get_abs_pos(const, 36) - 0.7).abs().max()) < 1e-12
    C.check("get_abs_pos: identity on equal grids, bicubic weights sum to 1", ok)


def F_mha(q, k, v, E, heads, w_in, b_in, w_out, b_out):
    return torch.nn.functional.multi_head_attention_forward(
        q, k, v, E, heads, w_in, b_in, None, None, False, 0.0, w_out, b_out,
        training=False, need_weights=False)


def check_finite_differences(C):
    """Analytic gradients of the float64 reference against central differences."""
    cfg = mr.MonkeyConfig(tl.tiny_config_dict(window_size=84, image_size=168))
    m = mr.MonkeyRef(cfg, mr.random_weights(cfg, 11))
    samples = tl.make_samples(cfg, 12, 2)
    loss, _ = m.microbatch_loss(samples)
    loss.backward()
    names = ["transformer.visual.conv1.weight", "transformer.visual.positional_embedding",
             "transformer.visual.ln_pre.bias",
             "transformer.visual.transformer.resblocks.0.attn.in_proj.weight",
             "transformer.visual.transformer.resblocks.1.attn.in_proj_lora.2.lora_a.weight",
             "transformer.visual.transformer.resblocks.0.attn.out_proj_lora.0.lora_b.weight",
             "transformer.visual.transformer.resblocks.1.mlp_lora.3.lora_scale",
             "transformer.visual.transformer.resblocks.1.mlp_lora.1.lora_a.weight",
             "transformer.visual.transformer.resblocks.0.mlp.c_fc.bias",
             "transformer.visual.attn_pool.query", "transformer.visual.attn_pool.pos_embed",
             "transformer.visual.attn_pool.kv_proj.weight",
             "transformer.visual.attn_pool.attn.in_proj_bias",
             "transformer.visual.attn_pool.ln_kv.weight", "transformer.visual.ln_post.weight",
             "transformer.visual.proj", "transformer.wte.weight",
             "transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.w2.weight",
             "transformer.h.0.ln_1.weight", "transformer.ln_f.weight", "lm_head.weight"]
    h = 1e-5
    worst, bad = 0.0, []
    with torch.no_grad():
        for name in names:
            prm = m.p[name]
            g = prm.grad.flatten()
            for e in [int(g.abs().argmax()), int(torch.randint(g.numel(), (1,),
                                                               generator=torch.Generator().manual_seed(len(name))))]:
                flat = prm.data.view(-1)
                old = float(flat[e])
                flat[e] = old + h
                lp = float(m.microbatch_loss(samples)[0])
                flat[e] = old - h
                lm = float(m.microbatch_loss(samples)[0])
                flat[e] = old
                fd = (lp - lm) / (2 * h)
                err = abs(fd - float(g[e])) / max(float(g.abs().max()), 1e-6)
                worst = max(worst, err)
                if err > 1e-6:
                    bad.append("%s[%d]: fd %.6e vs %.6e" % (name, e, fd, float(g[e])))
    C.check("reference gradients == central differences (%d params, 2 entries each)" % len(names),
            not bad, "worst %.1e relative to max|g|" % worst + ("; " + "; ".join(bad) if bad else ""))

    # Every parameter gets a gradient (no dead path: the splice is differentiable),
    # the <imgpad> embedding rows get none (they are replaced), and key biases get
    # none (softmax is shift-invariant; the LLM's are not: RoPE rotates them).
    dead = [n for n, p in m.p.items() if p.grad is None or float(p.grad.abs().max()) == 0.0]
    C.check("reference: every parameter has a non-zero gradient", not dead, ", ".join(dead[:5]))
    wte = m.p["transformer.wte.weight"].grad
    E = cfg.output_dim
    kb = m.p["transformer.visual.attn_pool.attn.in_proj_bias"].grad[E:2 * E]
    C.check("reference: <imgpad> row of wte has zero gradient; resampler key bias gradient ~0",
            float(wte[cfg.img_pad_id].abs().max()) == 0.0 and float(kb.abs().max()) < 1e-13,
            "key bias |g| %.1e" % float(kb.abs().max()))


# ----------------------------------------------------------------------------
# The C tool against the reference
# ----------------------------------------------------------------------------
def read_dump(path):
    import h5py
    with h5py.File(path, "r") as f:
        kinds = (f["loss"].dtype, f["loss"].shape, f["n_targets"].dtype, f["n_targets"].shape)
        if kinds != (np.float64, (), np.int64, ()):
            raise ValueError("%s: /loss must be a float64 scalar and /n_targets an int64 "
                             "scalar, found %s" % (path, kinds))
        loss = float(f["loss"][()])
        n = int(f["n_targets"][()])
        grads = {k: f["grads"][k][...] for k in f["grads"].keys()} if "grads" in f else {}
        dtypes = {k: f["grads"][k].dtype for k in f["grads"].keys()} if "grads" in f else {}
    return loss, n, grads, dtypes


def compare_run(C, tag, cfg, dump, ref_loss, ref_n, ref_grads, scale_terms, preset):
    loss, n, grads, dtypes = dump
    rel = abs(loss - ref_loss) / abs(ref_loss)
    C.check("%s: loss" % tag, rel <= LOSS_TOL, "C %.10f ref %.10f rel %.1e" % (loss, ref_loss, rel))
    C.check("%s: n_targets" % tag, n == ref_n, "C %d ref %d" % (n, ref_n))
    expect = set(mr.trainable_names(cfg, preset))
    missing, extra = sorted(expect - set(grads)), sorted(set(grads) - expect)
    C.check("%s: /grads holds exactly the %d trainable parameters" % (tag, len(expect)),
            not missing and not extra,
            ("missing %s" % missing[:6] if missing else "") + (" unexpected %s" % extra[:6] if extra else ""))
    errors, bad = [], []
    for name in sorted(expect & set(grads)):
        g, r = grads[name], ref_grads[name]
        if tuple(g.shape) != tuple(r.shape) or dtypes[name] != np.float32:
            bad.append("%s (shape %s dtype %s, expected %s float32)" % (name, g.shape, dtypes[name], r.shape))
            continue
        if not np.all(np.isfinite(g)):
            bad.append("%s (non-finite)" % name)
            continue
        ref_max = float(np.abs(r).max())
        if name in scale_terms:
            ref_max = max(ref_max, SCALAR_COND * scale_terms[name])
        err = float(np.abs(g.astype(np.float64) - r).max()) / max(ref_max, 1e-6)
        errors.append((name, err, ref_max))
        if err > GRAD_TOL:
            bad.append("%s (%.2e)" % (name, err))
    if errors:
        tl.rel_err_table(errors, tag + " gradient errors")
    C.check("%s: every gradient within %.0e" % (tag, GRAD_TOL), not bad and bool(errors),
            ("%d over: %s" % (len(bad), ", ".join(bad[:20]))) if bad else
            "worst %.2e" % max(e[1] for e in errors))
    return grads


def run_variant(C, dump_tool, variant, overrides, wd):
    cfg_dict = tl.tiny_config_dict(**overrides)
    cfg = mr.MonkeyConfig(cfg_dict)
    vd = os.path.join(wd, variant)
    os.makedirs(vd)
    weights = mr.random_weights(cfg, 100 + len(variant))
    mr.write_model_dir(os.path.join(vd, "model"), cfg_dict, weights)
    # Four samples: the tool must take the first three only.
    samples = tl.make_samples(cfg, 200 + len(variant), MICRO_BATCH + 1)
    data = os.path.join(vd, "data.h5")
    mr.write_dataset(data, samples, cfg.image_size)

    # The reference reads the files back, as the C tool does.
    ref_w = mr.load_safetensors(os.path.join(vd, "model", "model.safetensors"))
    m = mr.MonkeyRef(cfg, ref_w, torch.float64)
    m.scale_terms = {}
    batch = mr.read_dataset(data)[:MICRO_BATCH]
    loss, n = m.microbatch_loss([(t, l, list(im)) for t, l, im in batch])
    loss.backward()
    ref_grads = {k: p.grad.numpy().copy() for k, p in m.p.items()}
    ref_loss = float(loss)
    print("   %s: reference loss %.8f over %d targets" % (variant, ref_loss, n))

    presets = ("full", "monkey")
    recomputes = (False, True) if variant != "tiny-w64" else (False,)
    for preset in presets:
        got = {}
        for rc in recomputes:
            tag = "%s/%s/recompute=%s" % (variant, preset, "on" if rc else "off")
            train = {"trainable": preset, "train_micro_batch_size_per_gpu": MICRO_BATCH,
                     "recompute": {"vit": rc, "llm": rc}, "data": {"shuffle": False}}
            tp = os.path.join(vd, "train-%s-%d.json" % (preset, rc))
            with open(tp, "w") as f:
                json.dump(train, f, indent=2)
            out = os.path.join(vd, "grads-%s-%d.h5" % (preset, rc))
            code, _ = tl.run([dump_tool, os.path.join(vd, "model"), data, tp, out],
                             log=out + ".log")
            if not C.check("%s: dump_grads ran" % tag, code == 0 and os.path.exists(out),
                           "rc %d (log %s.log)" % (code, out)):
                continue
            try:
                dump = read_dump(out)
            except (ValueError, KeyError) as e:
                C.check("%s: OUT.h5 layout" % tag, False, str(e))
                continue
            got[rc] = compare_run(C, tag, cfg, dump, ref_loss, n, ref_grads,
                                  m.scale_terms, preset)
        if len(got) == 2:
            worst, names = 0.0, set(got[False]) & set(got[True])
            same_bits = all(np.array_equal(got[False][k], got[True][k]) for k in names)
            for k in names:
                a, b = got[False][k].astype(np.float64), got[True][k].astype(np.float64)
                worst = max(worst, float(np.abs(a - b).max()) / max(float(np.abs(a).max()), 1e-6))
            C.check("%s/%s: recompute on == off" % (variant, preset),
                    worst <= 1e-6 and set(got[False]) == set(got[True]),
                    "bit-identical" if same_bits else "max rel diff %.1e" % worst)


def main():
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    reference_only = "--reference-only" in sys.argv[1:]
    C = tl.Checks("model gradients: C dump_grads vs the PyTorch reference")
    wd = tl.work_dir("model_grads")
    check_param_counts(C)
    check_formats(C, wd)
    check_layouts(C)
    check_finite_differences(C)
    if reference_only:
        C.finish()
    dump_tool = os.environ.get("VLM_DUMP_GRADS", "")
    if not C.check("VLM_DUMP_GRADS names the dump_grads program",
                   bool(dump_tool) and os.path.isfile(dump_tool) and os.access(dump_tool, os.X_OK),
                   "VLM_DUMP_GRADS=%r (%s)" % (dump_tool, os.environ.get("VLM_DUMP_GRADS_MISSING",
                                                                       "built by tests/model_tool.cmake"))):
        C.finish()
    for variant, overrides in tl.VARIANTS.items():
        run_variant(C, dump_tool, variant, overrides, wd)
    C.finish()


if __name__ == "__main__":
    main()
