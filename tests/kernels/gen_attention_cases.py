"""tests/kernels/gen_attention_cases.py: reference cases for the attention kernel.

Writes attention_cases.h5 (or the path given as argv[1]) for test_attention.c:
random inputs in the three layouts the trainer uses, an upstream gradient dout,
and the expected out, lse and input gradients from PyTorch autograd, computed
in float64 from the float32 inputs and stored as float32.

Layouts (attribute `layout`):
  0  ViT in_proj output: qkv[T, 3*H*D], head h holds [q_h | k_h | v_h]
  1  LLM c_attn output:  qkv[T, 3*H*D] = [q | k | v], heads contiguous in each
  2  cross attention:    q[Tq, H*D], k[Tk, H*D], v[Tk, H*D]; also causal with
     Tq < Tk (query i at key position i + Tk - Tq)
Gradients have the layout of their inputs (dqkv, or dq/dk/dv). out is
[Tq, H*D], lse[H, Tq] the log-sum-exp of the scaled scores per query row.
Each case is a group /caseNN with integer attributes layout, Tq, Tk, H, D,
causal and a float attribute scale.
"""
import sys

import h5py
import numpy as np
import torch

VIT, LLM, CROSS = 0, 1, 2
BLOCK = 128  # ATTN_BQ in kernels/cpu/attention.c: cases at 4*BLOCK and BLOCK+1 rows

# (layout, Tq, Tk, H, D, causal, input scale)
CASES = [
    (VIT, 37, 37, 3, 13, 0, 1.5),
    (LLM, 130, 130, 4, 16, 1, 1.0),    # more than one query block; first causal LLM
                                       # case, so also the accumulate and NULL dk case
    (LLM, 70, 70, 4, 16, 1, 1.0),
    (CROSS, 9, 50, 2, 8, 0, 1.0),
    (LLM, 4 * BLOCK, 4 * BLOCK, 2, 8, 1, 1.0),  # exactly four blocks; at 7 threads the
                                                # backward splits each head in 3 groups
    (VIT, BLOCK + 1, BLOCK + 1, 3, 12, 0, 2.0),  # one block and one row
    # causal with Tq < Tk: the queries are the last Tq positions (the LLM's last
    # block runs its attention for a sequence's tail only)
    (CROSS, 21, 150, 2, 16, 1, 1.0),
    (CROSS, BLOCK + 2, 2 * BLOCK + 40, 3, 8, 1, 1.0),
    # head widths that take every column tile of attn_gemm (kernels/cpu/attn_gemm.c:
    # 59 = 32 + 16 + 8 + 3 columns; 104 = 3 * 32 + 8, the released ViT's heads),
    # with row counts that end in a partial tile of rows
    (VIT, 203, 203, 2, 59, 0, 1.0),
    (LLM, 2 * BLOCK + 5, 2 * BLOCK + 5, 2, 59, 1, 1.0),
    (CROSS, 75, 333, 2, 40, 1, 1.0),
    (VIT, 45, 45, 2, 104, 0, 1.0),
    (LLM, 150, 150, 1, 128, 1, 1.0),
]


def split_heads(x, H, D):
    """[T, H*D] -> [H, T, D]"""
    return x.reshape(x.shape[0], H, D).permute(1, 0, 2)


def attention(q, k, v, causal, scale):
    """q[H,Tq,D], k/v[H,Tk,D] -> out[Tq, H*D], lse[H, Tq] (float64)."""
    s = torch.matmul(q, k.transpose(1, 2)) * scale
    if causal:  # query i is at key position i + Tk - Tq and sees the keys up to it
        Tq, Tk = s.shape[1], s.shape[2]
        mask = torch.ones(Tq, Tk, dtype=torch.bool).triu(1 + Tk - Tq)
        s = s.masked_fill(mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    o = torch.matmul(torch.softmax(s, dim=-1), v)
    H, Tq, D = o.shape
    return o.permute(1, 0, 2).reshape(Tq, H * D), lse


def f32(t):
    return t.detach().to(torch.float32).numpy()


def make_case(g, gen, layout, Tq, Tk, H, D, causal, amp):
    scale = 1.0 / np.sqrt(D)
    HD = H * D

    def rnd(*shape):
        return (torch.randn(*shape, generator=gen) * amp).to(torch.float32).to(torch.float64)

    if layout in (VIT, LLM):
        qkv = rnd(Tq, 3 * HD).requires_grad_(True)
        if layout == VIT:
            per_head = qkv.reshape(Tq, H, 3, D)
            q, k, v = (per_head[:, :, i, :].permute(1, 0, 2) for i in range(3))
        else:
            q, k, v = (split_heads(qkv[:, i * HD:(i + 1) * HD], H, D) for i in range(3))
        leaves = {"qkv": qkv}
    else:
        qx, kx, vx = rnd(Tq, HD), rnd(Tk, HD), rnd(Tk, HD)
        for t in (qx, kx, vx):
            t.requires_grad_(True)
        q, k, v = split_heads(qx, H, D), split_heads(kx, H, D), split_heads(vx, H, D)
        leaves = {"q": qx, "k": kx, "v": vx}

    out, lse = attention(q, k, v, causal, scale)
    dout = torch.randn(Tq, HD, generator=gen).to(torch.float32).to(torch.float64)
    out.backward(dout)

    for name, t in leaves.items():
        g.create_dataset(name, data=f32(t))
        g.create_dataset("d" + name, data=f32(t.grad))
    g.create_dataset("dout", data=f32(dout))
    g.create_dataset("out", data=f32(out))
    g.create_dataset("lse", data=f32(lse))
    for key, val in (("layout", layout), ("Tq", Tq), ("Tk", Tk), ("H", H), ("D", D),
                     ("causal", causal)):
        g.attrs[key] = np.int32(val)
    g.attrs["scale"] = np.float32(scale)


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "attention_cases.h5"
    gen = torch.Generator().manual_seed(1234)
    with h5py.File(path, "w") as f:
        f.attrs["n_cases"] = np.int32(len(CASES))
        for i, c in enumerate(CASES):
            make_case(f.create_group("case%02d" % i), gen, *c)
    print("wrote %d attention cases to %s" % (len(CASES), path))


if __name__ == "__main__":
    main()
