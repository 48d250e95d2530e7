#!/usr/bin/env python3
"""tests/kernels/gen_kernel_cases.py: reference cases for the CPU kernels (kernels/kernels.h).

Writes kernel_cases.h5 (in the working directory, or the path given as argv[1]) for
tests/kernels/test_kernels.c. One group per case, holding fp32 inputs, upstream
gradients, expected outputs and expected gradients, with the shapes as integer
attributes. References come from PyTorch (autograd in float64 on the same fp32
inputs, results cast to fp32), except where the model itself works in fp32 (RoPE
angles, as Qwen computes them) and where a closed form is written here from its
documented definition (the MAE 2-D sin-cos table, the HF cosine schedule). Sizes are
odd on purpose. Deterministic: fixed seeds.
"""
import math
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

torch.manual_seed(1234)
rng = np.random.default_rng(1234)
f64 = torch.float64


def rnd(*shape, scale=1.0):
    """fp32 random normal data, returned as a float64 tensor holding fp32 values."""
    return (torch.randn(*shape, dtype=torch.float32) * scale).to(f64)


def put(grp, **arrays):
    for name, a in arrays.items():
        if isinstance(a, torch.Tensor):
            a = a.detach().numpy()
        a = np.asarray(a)
        if a.dtype.kind == "f":
            a = a.astype(np.float32)
        elif a.dtype.kind in "iu":
            a = a.astype(np.int32)
        grp.create_dataset(name, data=a)


def attrs(g, **kv):
    for k, v in kv.items():
        g.attrs[k] = np.float64(v) if isinstance(v, float) else np.int64(v)


def leaf(t):
    return t.clone().requires_grad_(True)


def case_linear(f, name, N, I, O):
    x, W, b, dout = leaf(rnd(N, I)), leaf(rnd(O, I, scale=0.2)), leaf(rnd(O)), rnd(N, O)
    out = F.linear(x, W, b)
    out.backward(dout)
    g = f.create_group(name)
    attrs(g, N=N, I=I, O=O)
    put(g, inp=x, W=W, b=b, dout=dout, out=out, out_nobias=F.linear(x, W),
        din=x.grad, dW=W.grad, db=b.grad)


def case_matmul(f, name, N, I, O):
    x, P, dout = leaf(rnd(N, I)), leaf(rnd(I, O, scale=0.2)), rnd(N, O)
    out = x @ P
    out.backward(dout)
    g = f.create_group(name)
    attrs(g, N=N, I=I, O=O)
    put(g, inp=x, P=P, dout=dout, out=out, din=x.grad, dP=P.grad)


def case_layernorm(f, name, N, C, eps):
    # an offset and a spread per row, so the mean and variance matter
    x = leaf(rnd(N, C) * (1 + 3 * torch.rand(N, 1, dtype=f64)) + 2 * rnd(N, 1))
    w, b, dout = leaf(1 + rnd(C, scale=0.3)), leaf(rnd(C, scale=0.3)), rnd(N, C)
    out = F.layer_norm(x, (C,), w, b, eps)
    out.backward(dout)
    xd = x.detach()
    mean = xd.mean(dim=1)
    rstd = 1.0 / torch.sqrt(xd.var(dim=1, unbiased=False) + eps)
    g = f.create_group(name)
    attrs(g, N=N, C=C, eps=eps)
    put(g, inp=x, w=w, b=b, dout=dout, out=out, mean=mean, rstd=rstd,
        din=x.grad, dw=w.grad, db=b.grad)


def case_rmsnorm(f, name, N, C, eps):
    x = leaf(rnd(N, C) * (0.5 + 3 * torch.rand(N, 1, dtype=f64)))
    w, dout = leaf(1 + rnd(C, scale=0.3)), rnd(N, C)
    # Qwen's RMSNorm: x * rsqrt(mean(x^2) + eps) * w
    out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
    out.backward(dout)
    rstd = torch.rsqrt(x.detach().pow(2).mean(-1) + eps)
    g = f.create_group(name)
    attrs(g, N=N, C=C, eps=eps)
    put(g, inp=x, w=w, dout=dout, out=out, rstd=rstd, din=x.grad, dw=w.grad)


def case_gelu(f, name, n):
    x, dout = leaf(rnd(n, scale=2.5)), rnd(n)
    out = F.gelu(x)  # approximate="none": exact erf form
    out.backward(dout)
    g = f.create_group(name)
    attrs(g, n=n)
    put(g, inp=x, dout=dout, out=out, din=x.grad)


def case_swiglu(f, name, n):
    a, gg, dout = leaf(rnd(n)), leaf(rnd(n, scale=4.0)), rnd(n)
    with torch.no_grad():  # a few saturated gates
        gg[:5] = torch.tensor([-60.0, -20.0, 0.0, 20.0, 60.0], dtype=f64)
    out = a * F.silu(gg)
    out.backward(dout)
    g = f.create_group(name)
    attrs(g, n=n)
    put(g, a=a, g=gg, dout=dout, out=out, da=a.grad, dg=gg.grad)


def case_softmax(f, name, N, C):
    x, dout = leaf(rnd(N, C, scale=3.0) + 20.0), rnd(N, C)
    out = torch.softmax(x, dim=1)
    out.backward(dout)
    g = f.create_group(name)
    attrs(g, N=N, C=C)
    put(g, inp=x, dout=dout, out=out, din=x.grad)


def case_rope(f, name, T, H, D, R, ld, base, maxpos):
    pos = torch.from_numpy(rng.integers(0, maxpos, size=T)).to(torch.int64)
    # Qwen's RotaryEmbedding and apply_rotary_pos_emb, angles in fp32
    inv_freq = 1.0 / (base ** (torch.arange(0, R, 2).float() / R))
    freqs = torch.outer(pos.float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(f64)[:, None, :], emb.sin().to(f64)[:, None, :]
    x = leaf(rnd(T, ld))
    xh = x[:, : H * D].reshape(T, H, D)
    xr, xp = xh[..., :R], xh[..., R:]
    x1, x2 = xr[..., : R // 2], xr[..., R // 2:]
    rot = torch.cat((-x2, x1), dim=-1)
    y = torch.cat((xr * cos + rot * sin, xp), dim=-1).reshape(T, H * D)
    out = torch.cat((y, x[:, H * D:]), dim=1)
    dout = rnd(T, ld)
    out.backward(dout)
    g = f.create_group(name)
    attrs(g, T=T, H=H, D=D, R=R, ld=ld, base=base)
    put(g, pos=pos, inp=x, dout=dout, out=out, din=x.grad)


def case_cross_entropy(f, name, N, V, scale):
    logits = leaf(rnd(N, V, scale=3.0))
    tg = torch.from_numpy(rng.integers(0, V, size=N)).to(torch.int64)
    tg[1] = -100
    tg[N - 2] = -100
    loss = F.cross_entropy(logits, tg, ignore_index=-100, reduction="sum")
    loss.backward(torch.tensor(scale, dtype=f64))
    g = f.create_group(name)
    attrs(g, N=N, V=V, n_valid=int((tg != -100).sum()), grad_scale=scale, loss=float(loss))
    put(g, logits=logits, targets=tg, dlogits=logits.grad)


def case_im2col(f, name, Himg, Wimg, y0, x0, win, p, width):
    img = rnd(Himg, Wimg, 3)
    Wc = rnd(width, 3 * p * p, scale=0.1)
    xw = img[y0:y0 + win, x0:x0 + win, :].permute(2, 0, 1)[None]  # [1,3,win,win]
    cols = F.unfold(xw, kernel_size=p, stride=p)[0].T  # [G*G, 3*p*p]
    conv = F.conv2d(xw, Wc.reshape(width, 3, p, p), stride=p)[0]  # [width, G, G]
    g = f.create_group(name)
    attrs(g, Himg=Himg, Wimg=Wimg, y0=y0, x0=x0, win=win, p=p, width=width)
    put(g, img=img, Wc=Wc, cols=cols, conv=conv.reshape(width, -1).T)


def case_bicubic_matrix(f, name, out_n, in_n):
    eye = torch.eye(in_n, dtype=torch.float32).reshape(in_n, 1, 1, in_n)
    cols = F.interpolate(eye, size=(1, out_n), mode="bicubic", align_corners=False)
    g = f.create_group(name)
    attrs(g, out_n=out_n, in_n=in_n)
    put(g, M=cols.reshape(in_n, out_n).T)


def case_bicubic_resize(f, name, Hi, Wi, Ho, Wo, C):
    x, dout = leaf(rnd(Hi, Wi, C)), rnd(Ho, Wo, C)
    y = F.interpolate(x.permute(2, 0, 1)[None], size=(Ho, Wo), mode="bicubic",
                      align_corners=False)[0].permute(1, 2, 0)
    y.backward(dout)
    g = f.create_group(name)
    attrs(g, Hi=Hi, Wi=Wi, Ho=Ho, Wo=Wo, C=C)
    put(g, inp=x, dout=dout, out=y, din=x.grad)


def sincos_reference(G, dim):
    """The 2-D table as the header describes it: token y*G+x is
    [sin(x*w) | cos(x*w) | sin(y*w) | cos(y*w)], w_i = 1/10000^(i/(dim/4))."""
    q = dim // 4
    w = 1.0 / 10000.0 ** (np.arange(q, dtype=np.float64) / q)
    yy, xx = np.meshgrid(np.arange(G, dtype=np.float64), np.arange(G, dtype=np.float64),
                         indexing="ij")
    ax = xx.reshape(-1, 1) * w[None, :]
    ay = yy.reshape(-1, 1) * w[None, :]
    return np.concatenate([np.sin(ax), np.cos(ax), np.sin(ay), np.cos(ay)], axis=1)


def case_sincos(f, name, G, dim):
    g = f.create_group(name)
    attrs(g, G=G, dim=dim)
    put(g, table=sincos_reference(G, dim))


def case_adamw(f, name, n, steps, lr, betas, eps, wd, gscale):
    p0 = torch.randn(n, dtype=torch.float32)
    grads = torch.randn(steps, n, dtype=torch.float32) * torch.rand(1, n) * 3
    grads[:, :7] = 0.0  # zero gradients: pure decay
    p = torch.nn.Parameter(p0.clone())
    opt = torch.optim.AdamW([p], lr=lr, betas=betas, eps=eps, weight_decay=wd, foreach=False)
    ps = []
    for s in range(steps):
        p.grad = grads[s].clone()
        if gscale != 1.0:  # what clip_grad_norm_ does to the gradient: an fp32 in-place product
            p.grad.mul_(torch.tensor(gscale, dtype=torch.float32))
        opt.step()
        ps.append(p.detach().clone())
    st = opt.state[p]
    g = f.create_group(name)
    attrs(g, n=n, steps=steps, lr=lr, beta1=betas[0], beta2=betas[1], eps=eps, wd=wd,
          gscale=gscale)
    put(g, p0=p0, grads=grads, p=torch.stack(ps), m=st["exp_avg"], v=st["exp_avg_sq"])


def case_sum_squares(f, name, n):
    x = (torch.randn(n, dtype=torch.float32) * 3).numpy()
    g = f.create_group(name)
    attrs(g, n=n, ss=float(np.sum(x.astype(np.float64) ** 2)))
    put(g, x=x)


def cosine_with_warmup(step, warmup, total, cycles):
    """HF transformers get_cosine_schedule_with_warmup, lr_lambda(current_step)."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(cycles) * 2.0 * progress)))


def case_lr(f, name, warmup, total, cycles):
    steps = np.arange(0, total + 21)
    g = f.create_group(name)
    attrs(g, warmup=warmup, total=total, cycles=float(cycles), nsteps=len(steps))
    g.create_dataset("lr", data=np.array([cosine_with_warmup(int(s), warmup, total, cycles)
                                          for s in steps], dtype=np.float64))


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "kernel_cases.h5"
    with h5py.File(path, "w") as f:
        case_linear(f, "linear_small", 7, 13, 9)
        case_linear(f, "linear_large", 33, 70, 41)
        case_linear(f, "linear_wide", 5, 31, 517)  # more than one bias-gradient block
        # at most 4 rows: linear.c's one-pass (skinny) loops instead of sgemm
        case_linear(f, "linear_rows1", 1, 37, 300)
        case_linear(f, "linear_rows3", 3, 70, 1029)
        case_linear(f, "linear_rows4", 4, 641, 33)
        case_linear(f, "linear_rows2_wide", 2, 2100, 45)  # din in 3 column passes
        case_matmul(f, "matmul_small", 7, 13, 9)
        case_matmul(f, "matmul_large", 33, 70, 41)
        case_layernorm(f, "layernorm_small", 7, 13, 1e-6)
        case_layernorm(f, "layernorm_large", 33, 1001, 1e-5)
        case_rmsnorm(f, "rmsnorm_small", 7, 13, 1e-6)
        case_rmsnorm(f, "rmsnorm_large", 33, 1001, 1e-6)
        case_gelu(f, "gelu", 10007)
        case_swiglu(f, "swiglu", 10007)
        case_softmax(f, "softmax_small", 7, 13)
        case_softmax(f, "softmax_large", 33, 1001)
        case_rope(f, "rope_partial", 7, 3, 10, 6, 3 * 3 * 10 + 5, 10000.0, 50)
        case_rope(f, "rope_full", 33, 5, 16, 16, 5 * 16, 10000.0, 2048)
        case_rope(f, "rope_wide", 9, 2, 198, 198, 2 * 198, 10000.0, 200)  # > 64 freqs
        case_cross_entropy(f, "xent_small", 7, 13, 0.37)
        case_cross_entropy(f, "xent_large", 33, 1001, 1.0 / 31)
        case_im2col(f, "im2col", 37, 45, 5, 11, 21, 3, 9)
        for o, i in [(32, 16), (7, 4), (20, 40), (13, 37), (16, 16), (1, 5)]:
            case_bicubic_matrix(f, f"bicubic_matrix_{i}_{o}", o, i)
        case_bicubic_resize(f, "bicubic_up_16_32", 16, 16, 32, 32, 5)
        case_bicubic_resize(f, "bicubic_up_4_7", 4, 4, 7, 7, 3)
        case_bicubic_resize(f, "bicubic_down_40_20", 40, 40, 20, 20, 3)
        case_bicubic_resize(f, "bicubic_down_37x29_13x17", 37, 29, 13, 17, 4)
        case_sincos(f, "sincos_5_16", 5, 16)
        case_sincos(f, "sincos_7_36", 7, 36)
        case_sincos(f, "sincos_16_64", 16, 64)
        case_adamw(f, "adamw", 1001, 5, 1e-2, (0.9, 0.95), 1e-8, 0.1, 1.0)
        case_adamw(f, "adamw_clipped", 1001, 5, 1e-2, (0.9, 0.95), 1e-8, 0.1, 0.37)
        case_sum_squares(f, "sum_squares", 100003)
        case_lr(f, "lr_half_cycle", 10, 100, 0.5)
        case_lr(f, "lr_no_warmup", 0, 37, 1.5)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
