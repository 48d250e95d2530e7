# tests/reference/monkey_ref.py: an independent PyTorch reference of the Monkey
# vision-language model, written from ../shared/docs/monkey-architecture.md (not
# from the C code), against which the C trainer's loss, gradients and optimizer
# steps are judged. It also holds the small file tools the tests need: the model
# config with its derived sizes, the parameter registry (names and shapes, no
# allocation), a safetensors reader/writer (json + struct + numpy) and the
# vlmtrain HDF5 dataset reader/writer (h5py).
#
# It is a reference, not a trainer: plain, per-sample, per-view code that is easy
# to check by eye; float64 by default (float32 on request). It does not pad,
# batch, shard, checkpoint or use dropout.
import fnmatch
import json
import math
import struct

import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IGNORE = -100
VIT_LN_EPS = 1e-6


# ----------------------------------------------------------------------------
# Model configuration (HF config.json of the Monkey format)
# ----------------------------------------------------------------------------
class MonkeyConfig:
    """Every dimension read from config.json, with the derived sizes of the doc."""

    def __init__(self, d):
        self.raw = d
        self.hidden_size = int(d["hidden_size"])
        self.intermediate_size = int(d["intermediate_size"])
        self.num_attention_heads = int(d["num_attention_heads"])
        self.num_hidden_layers = int(d["num_hidden_layers"])
        self.kv_channels = int(d.get("kv_channels", self.hidden_size // self.num_attention_heads))
        self.layer_norm_epsilon = float(d.get("layer_norm_epsilon", 1e-6))
        self.rotary_emb_base = float(d.get("rotary_emb_base", 10000))
        self.rotary_pct = float(d.get("rotary_pct", 1.0))
        self.vocab_size = int(d["vocab_size"])
        self.seq_length = int(d.get("seq_length", 2048))
        v = d["visual"]
        self.width = int(v["width"])
        self.layers = int(v["layers"])
        self.heads = int(v["heads"])
        self.patch_size = int(v["patch_size"])
        self.mlp_ratio = float(v["mlp_ratio"])
        self.output_dim = int(v["output_dim"])
        self.image_size = int(v["image_size"])
        self.image_start_id = int(v["image_start_id"])
        self.lora_repeat_num = int(v["lora_repeat_num"])
        self.n_queries = int(v.get("n_queries", 256))
        self.window_size = int(v.get("window_size", 448))
        self.resampler_heads = int(v.get("resampler_heads", self.output_dim // 128))
        self.lora_rank = int(v.get("lora_rank", 16))
        self.lora_mlp_rank = int(v.get("lora_mlp_rank", 32))
        # derived (ViT)
        self.vit_head_dim = self.width // self.heads
        self.mlp_width = int(self.width * self.mlp_ratio)
        self.windows_per_side = (self.image_size - self.window_size) // self.window_size + 1
        self.n_windows = self.windows_per_side ** 2
        self.grid = self.window_size // self.patch_size
        self.n_patches = self.grid ** 2
        self.query_grid = int(round(math.sqrt(self.n_queries)))
        self.img_slots = (self.n_windows + 1) * self.n_queries
        # derived (LLM)
        self.head_dim = self.hidden_size // self.num_attention_heads
        self.ffn = self.intermediate_size // 2
        self.rotary_dim = int(self.head_dim * self.rotary_pct)
        self.img_end_id = self.image_start_id + 1
        self.img_pad_id = self.image_start_id + 2
        self.eos_id = 151643 if 151643 < self.vocab_size else self.image_start_id - 1
        # the facts the model relies on
        assert self.width % self.heads == 0
        assert self.output_dim % self.resampler_heads == 0
        assert self.hidden_size % self.num_attention_heads == 0
        assert self.query_grid ** 2 == self.n_queries, "n_queries must be a square"
        assert self.window_size % self.patch_size == 0
        assert self.n_windows == self.lora_repeat_num, "windows must equal lora_repeat_num"
        assert self.output_dim == self.hidden_size, "visual features must be hidden_size wide"
        assert self.rotary_dim % 2 == 0
        assert self.img_pad_id < self.vocab_size

    @classmethod
    def load(cls, path):
        with open(path) as f:
            return cls(json.load(f))


# ----------------------------------------------------------------------------
# Parameter registry: upstream names and shapes, computed without allocating
# ----------------------------------------------------------------------------
def param_shapes(cfg):
    """[(name, shape)] of every tensor of the checkpoint, module by module."""
    W, E, H, V = cfg.width, cfg.output_dim, cfg.hidden_size, cfg.vocab_size
    p, M = cfg.patch_size, cfg.mlp_width
    out = []
    vis = "transformer.visual."
    out.append((vis + "conv1.weight", (W, 3, p, p)))
    out.append((vis + "positional_embedding", (256, W)))
    out += [(vis + "ln_pre.weight", (W,)), (vis + "ln_pre.bias", (W,))]
    for L in range(cfg.layers):
        b = "%stransformer.resblocks.%d." % (vis, L)
        out += [(b + "ln_1.weight", (W,)), (b + "ln_1.bias", (W,)),
                (b + "attn.in_proj.weight", (3 * W, W)), (b + "attn.in_proj.bias", (3 * W,)),
                (b + "attn.out_proj.weight", (W, W)), (b + "attn.out_proj.bias", (W,)),
                (b + "ln_2.weight", (W,)), (b + "ln_2.bias", (W,)),
                (b + "mlp.c_fc.weight", (M, W)), (b + "mlp.c_fc.bias", (M,)),
                (b + "mlp.c_proj.weight", (W, M)), (b + "mlp.c_proj.bias", (W,))]
        for k in range(cfg.lora_repeat_num):
            for ad, r, o in (("attn.in_proj_lora", cfg.lora_rank, 3 * W),
                             ("attn.out_proj_lora", cfg.lora_rank, W),
                             ("mlp_lora", cfg.lora_mlp_rank, W)):
                a = "%s%s.%d." % (b, ad, k)
                out += [(a + "lora_a.weight", (r, W)), (a + "lora_b.weight", (o, r)),
                        (a + "lora_scale", (1,))]
    ap = vis + "attn_pool."
    out += [(ap + "query", (cfg.n_queries, E)), (ap + "pos_embed", (cfg.n_queries, E))]
    if W != E:
        out.append((ap + "kv_proj.weight", (E, W)))
    out += [(ap + "attn.in_proj_weight", (3 * E, E)), (ap + "attn.in_proj_bias", (3 * E,)),
            (ap + "attn.out_proj.weight", (E, E)), (ap + "attn.out_proj.bias", (E,)),
            (ap + "ln_q.weight", (E,)), (ap + "ln_q.bias", (E,)),
            (ap + "ln_kv.weight", (E,)), (ap + "ln_kv.bias", (E,))]
    out += [(vis + "ln_post.weight", (E,)), (vis + "ln_post.bias", (E,)), (vis + "proj", (E, E))]
    out.append(("transformer.wte.weight", (V, H)))
    for L in range(cfg.num_hidden_layers):
        b = "transformer.h.%d." % L
        out += [(b + "ln_1.weight", (H,)),
                (b + "attn.c_attn.weight", (3 * H, H)), (b + "attn.c_attn.bias", (3 * H,)),
                (b + "attn.c_proj.weight", (H, H)),
                (b + "ln_2.weight", (H,)),
                (b + "mlp.w1.weight", (cfg.ffn, H)), (b + "mlp.w2.weight", (cfg.ffn, H)),
                (b + "mlp.c_proj.weight", (H, cfg.ffn))]
    out += [("transformer.ln_f.weight", (H,)), ("lm_head.weight", (V, H))]
    return out


def part_of(name):
    """The part of the model of the doc's parameter-count table."""
    if "lora" in name:
        return "vit_lora"
    if name.startswith("transformer.visual.attn_pool."):
        return "attn_pool"
    if name in ("transformer.visual.ln_post.weight", "transformer.visual.ln_post.bias",
                "transformer.visual.proj"):
        return "post"
    if name.startswith("transformer.visual."):
        return "vit_trunk"
    return "llm"


def trainable_names(cfg, preset):
    """Names trained by a preset: "full" (everything) or "monkey" (the doc's table)."""
    names = [n for n, _ in param_shapes(cfg)]
    if preset == "full":
        return names
    if preset == "monkey":
        return [n for n in names if part_of(n) in ("vit_lora", "attn_pool", "llm")]
    raise ValueError("unknown preset %r" % preset)


def numel(shape):
    n = 1
    for s in shape:
        n *= int(s)
    return n


def glob_match(name, pattern):
    """Glob over a full name; '*' crosses dots (fnmatch without FNM_PATHNAME)."""
    return fnmatch.fnmatchcase(name, pattern)


# ----------------------------------------------------------------------------
# safetensors (u64 LE header length, JSON header, raw little-endian data)
# ----------------------------------------------------------------------------
_ST_NP = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
          "F64": np.dtype("<f8"), "I64": np.dtype("<i8"), "I32": np.dtype("<i4")}


def _f32_to_bf16_bits(a):
    """Round-to-nearest-even fp32 -> bf16, returned as uint16 bits."""
    u = np.ascontiguousarray(a, dtype="<f4").view("<u4").astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype("<u2")


def save_safetensors(path, tensors, dtype="F32"):
    """Writes {name: array} in insertion order, data contiguous, header padded to 8."""
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        a = np.asarray(arr)
        if dtype == "BF16":
            raw = _f32_to_bf16_bits(a.astype(np.float32)).tobytes()
        else:
            raw = np.ascontiguousarray(a, dtype=_ST_NP[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": [int(s) for s in a.shape],
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


def read_safetensors_raw(path):
    """{name: (dtype, shape, bytes)} exactly as stored; checks the ranges."""
    with open(path, "rb") as f:
        data = f.read()
    (hlen,) = struct.unpack("<Q", data[:8])
    if hlen > len(data) - 8:
        raise ValueError("%s: header length %d beyond the file" % (path, hlen))
    header = json.loads(data[8:8 + hlen].decode("utf-8"))
    base = 8 + hlen
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        dt = _ST_NP[info["dtype"]]
        if base + e > len(data) or (e - b) != numel(info["shape"]) * dt.itemsize:
            raise ValueError("%s: tensor %s has a bad byte range" % (path, name))
        out[name] = (info["dtype"], tuple(info["shape"]), data[base + b:base + e])
    return out


def load_safetensors(path):
    """{name: float32 ndarray} (F32, F16, BF16 converted to float32)."""
    out = {}
    for name, (dt, shape, raw) in read_safetensors_raw(path).items():
        a = np.frombuffer(raw, dtype=_ST_NP[dt])
        if dt == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = a.astype(np.float32).reshape(shape)
    return out


# ----------------------------------------------------------------------------
# vlmtrain dataset (HDF5, format v1)
# ----------------------------------------------------------------------------
def write_dataset(path, samples, image_size):
    """samples: [(tokens, labels, images uint8 [n, S, S, 3])] in file order."""
    import h5py
    toks = np.concatenate([np.asarray(s[0], np.int32) for s in samples])
    labs = np.concatenate([np.asarray(s[1], np.int32) for s in samples])
    offs = np.zeros(len(samples) + 1, np.int64)
    ioffs = np.zeros(len(samples) + 1, np.int64)
    imgs = []
    for i, (t, l, im) in enumerate(samples):
        assert len(t) == len(l)
        offs[i + 1] = offs[i] + len(t)
        ioffs[i + 1] = ioffs[i] + len(im)
        imgs += list(im)
    S = image_size
    pix = np.stack(imgs).astype(np.uint8) if imgs else np.zeros((0, S, S, 3), np.uint8)
    with h5py.File(path, "w") as f:
        f.attrs["format"] = np.bytes_("vlmtrain-dataset")
        f.attrs["version"] = np.int32(1)
        f.attrs["image_size"] = np.int32(S)
        g = f.create_group("samples")
        g.create_dataset("tokens", data=toks)
        g.create_dataset("labels", data=labs)
        g.create_dataset("offsets", data=offs)
        g.create_dataset("image_offsets", data=ioffs)
        f.create_group("images").create_dataset("pixels", data=pix)


def read_dataset(path):
    """[(tokens int64, labels int64, pixels uint8 [n, S, S, 3])] in file order."""
    import h5py
    with h5py.File(path, "r") as f:
        toks = f["samples/tokens"][...].astype(np.int64)
        labs = f["samples/labels"][...].astype(np.int64)
        offs = f["samples/offsets"][...]
        ioffs = f["samples/image_offsets"][...]
        pix = f["images/pixels"][...]
    return [(toks[offs[i]:offs[i + 1]], labs[offs[i]:offs[i + 1]], pix[ioffs[i]:ioffs[i + 1]])
            for i in range(len(offs) - 1)]


# ----------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------
def get_abs_pos(table, tgt_len):
    """Qwen-VL's get_abs_pos: a square [g*g, C] table bicubic-resized to tgt_len tokens."""
    src = int(round(math.sqrt(table.shape[0])))
    tgt = int(round(math.sqrt(tgt_len)))
    if src == tgt:
        return table
    x = table.reshape(1, src, src, -1).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(tgt, tgt), mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(tgt * tgt, -1)


def layer_norm(x, w, b, eps=VIT_LN_EPS):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def attention(q, k, v, causal):
    """q [T, h, d], k/v [S, h, d] -> [T, h*d]; scale 1/sqrt(d)."""
    d = q.shape[-1]
    s = torch.einsum("thd,shd->hts", q, k) / math.sqrt(d)
    if causal:
        T, S = s.shape[-2], s.shape[-1]
        mask = torch.ones(T, S, dtype=torch.bool).triu(1)
        s = s.masked_fill(mask, float("-inf"))
    p = torch.softmax(s, dim=-1)
    o = torch.einsum("hts,shd->thd", p, v)
    return o.reshape(o.shape[0], -1)


def rope_tables(cfg, T, dtype):
    """cos/sin [T, R] of cat(freqs, freqs); angles computed in fp32 as Qwen does."""
    R = cfg.rotary_dim
    inv_freq = 1.0 / (cfg.rotary_emb_base ** (torch.arange(0, R, 2, dtype=torch.float32) / R))
    pos = torch.arange(T, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1).to(dtype)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    """x [T, h, d]: rotate-half RoPE on the first R dims of each head."""
    R = cos.shape[-1]
    xr, xp = x[..., :R], x[..., R:]
    x1, x2 = xr[..., :R // 2], xr[..., R // 2:]
    rot = torch.cat([-x2, x1], dim=-1)
    xr = xr * cos[:, None, :] + rot * sin[:, None, :]
    return torch.cat([xr, xp], dim=-1)


# ----------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------
class MonkeyRef(torch.nn.Module):
    """Monkey (ViT + window LoRA + resampler + Qwen LLM) with upstream names.

    self.p maps each upstream name to its torch.nn.Parameter (also registered on
    the module under the name with '.' replaced by '__')."""

    def __init__(self, cfg, weights=None, dtype=torch.float64):
        super().__init__()
        self.cfg = cfg
        self.dtype = dtype
        self.p = {}
        self.scale_terms = None  # {lora_scale name: sum |terms|} when a dict (see lora)
        for name, shape in param_shapes(cfg):
            if weights is not None:
                if name not in weights:
                    raise KeyError("weights lack %s" % name)
                a = np.asarray(weights[name])
                if tuple(a.shape) != tuple(shape):
                    raise ValueError("%s: shape %s, expected %s" % (name, a.shape, shape))
                t = torch.from_numpy(a.astype(np.float64)).to(dtype)
            else:
                t = torch.zeros(shape, dtype=dtype)
            prm = torch.nn.Parameter(t)
            self.register_parameter(name.replace(".", "__"), prm)
            self.p[name] = prm

    # ---- image path ----
    def preprocess(self, pixels):
        """uint8 [S, S, 3] RGB -> normalised float [3, S, S]."""
        x = torch.from_numpy(np.asarray(pixels)).to(self.dtype) / 255.0
        mean = torch.tensor(CLIP_MEAN, dtype=self.dtype)
        std = torch.tensor(CLIP_STD, dtype=self.dtype)
        return ((x - mean) / std).permute(2, 0, 1).contiguous()

    def views(self, img):
        """[3, S, S] -> [(view [3, ws, ws], lora set k or None)]: windows row-major, then global."""
        cfg, ws = self.cfg, self.cfg.window_size
        out = []
        for i in range(cfg.windows_per_side):
            for j in range(cfg.windows_per_side):
                out.append((img[:, i * ws:(i + 1) * ws, j * ws:(j + 1) * ws],
                            i * cfg.windows_per_side + j))
        g = F.interpolate(img[None], size=(ws, ws), mode="bicubic", align_corners=False)[0]
        out.append((g, None))
        return out

    def lora(self, prefix, k, x):
        """Monkey LoRA: lora_b(lora_a(x)) * lora_scale of set k (0 when k is None)."""
        if k is None:
            return 0.0
        a = "%s.%d." % (prefix, k)
        p = self.p
        u = (x @ p[a + "lora_a.weight"].t()) @ p[a + "lora_b.weight"].t()
        out = u * p[a + "lora_scale"]
        if self.scale_terms is not None and out.requires_grad:
            out.register_hook(lambda g, key=a + "lora_scale", ud=u.detach():
                              self._add_scale_terms(key, ud, g))
        return out

    def _add_scale_terms(self, key, u, g):
        """d loss / d lora_scale = sum(u * g): records sum |u * g|, the size of the
        terms that cancel in that scalar (what an fp32 sum's error scales with)."""
        self.scale_terms[key] = self.scale_terms.get(key, 0.0) + float((u * g).abs().sum())

    def vit_block(self, L, x, k):
        cfg, p = self.cfg, self.p
        b = "transformer.visual.transformer.resblocks.%d." % L
        T, h, d = x.shape[0], cfg.heads, cfg.vit_head_dim
        y = layer_norm(x, p[b + "ln_1.weight"], p[b + "ln_1.bias"])
        qkv = F.linear(y, p[b + "attn.in_proj.weight"], p[b + "attn.in_proj.bias"])
        qkv = qkv + self.lora(b + "attn.in_proj_lora", k, y)
        qkv = qkv.reshape(T, h, 3 * d)  # per head [q_h | k_h | v_h]
        ctx = attention(qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:], causal=False)
        out = F.linear(ctx, p[b + "attn.out_proj.weight"], p[b + "attn.out_proj.bias"])
        x = x + out + self.lora(b + "attn.out_proj_lora", k, ctx)
        residual = x
        y = layer_norm(x, p[b + "ln_2.weight"], p[b + "ln_2.bias"])
        y = F.linear(F.gelu(F.linear(y, p[b + "mlp.c_fc.weight"], p[b + "mlp.c_fc.bias"])),
                     p[b + "mlp.c_proj.weight"], p[b + "mlp.c_proj.bias"])
        return x + y + self.lora(b + "mlp_lora", k, residual)

    def vit(self, view, k):
        """One view [3, ws, ws] -> patch features [grid^2, width]."""
        p, vis = self.p, "transformer.visual."
        x = F.conv2d(view[None], p[vis + "conv1.weight"], stride=self.cfg.patch_size)
        x = x.flatten(2)[0].t()  # [g*g, W], row-major patch order
        x = x + get_abs_pos(p[vis + "positional_embedding"], x.shape[0])
        x = layer_norm(x, p[vis + "ln_pre.weight"], p[vis + "ln_pre.bias"])
        for L in range(self.cfg.layers):
            x = self.vit_block(L, x, k)
        return x

    def resampler(self, x):
        """Patch features [T, width] -> [n_queries, output_dim] (before ln_post)."""
        cfg, p, ap = self.cfg, self.p, "transformer.visual.attn_pool."
        E, nh = cfg.output_dim, cfg.resampler_heads
        if ap + "kv_proj.weight" in p:
            x = x @ p[ap + "kv_proj.weight"].t()
        x = layer_norm(x, p[ap + "ln_kv.weight"], p[ap + "ln_kv.bias"])
        keys = x + get_abs_pos(p[ap + "pos_embed"], x.shape[0])
        queries = layer_norm(p[ap + "query"], p[ap + "ln_q.weight"], p[ap + "ln_q.bias"]) \
            + p[ap + "pos_embed"]
        w, bias = p[ap + "attn.in_proj_weight"], p[ap + "attn.in_proj_bias"]
        q = F.linear(queries, w[:E], bias[:E])
        kk = F.linear(keys, w[E:2 * E], bias[E:2 * E])
        v = F.linear(x, w[2 * E:], bias[2 * E:])
        d = E // nh
        ctx = attention(q.reshape(-1, nh, d), kk.reshape(-1, nh, d), v.reshape(-1, nh, d),
                        causal=False)
        return F.linear(ctx, p[ap + "attn.out_proj.weight"], p[ap + "attn.out_proj.bias"])

    def encode_view(self, view, k):
        p, vis = self.p, "transformer.visual."
        x = self.resampler(self.vit(view, k))
        x = layer_norm(x, p[vis + "ln_post.weight"], p[vis + "ln_post.bias"])
        return x @ p[vis + "proj"]

    def encode_image(self, pixels):
        """uint8 [S, S, 3] -> [(n_windows + 1) * n_queries, hidden] features."""
        img = self.preprocess(pixels)
        return torch.cat([self.encode_view(v, k) for v, k in self.views(img)], dim=0)

    # ---- language model ----
    def llm_block(self, L, x, cos, sin):
        cfg, p = self.cfg, self.p
        b = "transformer.h.%d." % L
        T, H, nh, d = x.shape[0], cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
        y = rms_norm(x, p[b + "ln_1.weight"], cfg.layer_norm_epsilon)
        qkv = F.linear(y, p[b + "attn.c_attn.weight"], p[b + "attn.c_attn.bias"])
        q = apply_rope(qkv[:, :H].reshape(T, nh, d), cos, sin)
        k = apply_rope(qkv[:, H:2 * H].reshape(T, nh, d), cos, sin)
        v = qkv[:, 2 * H:].reshape(T, nh, d)
        x = x + F.linear(attention(q, k, v, causal=True), p[b + "attn.c_proj.weight"])
        y = rms_norm(x, p[b + "ln_2.weight"], cfg.layer_norm_epsilon)
        a1 = F.linear(y, p[b + "mlp.w1.weight"])
        a2 = F.linear(y, p[b + "mlp.w2.weight"])
        return x + F.linear(a1 * F.silu(a2), p[b + "mlp.c_proj.weight"])

    def embed(self, tokens, images):
        """Token embeddings with each <img>'s slots replaced by that image's features."""
        cfg = self.cfg
        tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
        x = self.p["transformer.wte.weight"][tokens]
        starts = (tokens == cfg.image_start_id).nonzero().flatten().tolist()
        if len(starts) != len(images):
            raise ValueError("%d <img> tags but %d images" % (len(starts), len(images)))
        if not starts:
            return x
        pieces, at = [], 0
        for a, pix in zip(starts, images):
            assert int(tokens[a + 1 + cfg.img_slots]) == cfg.img_end_id, "slots/</img> mismatch"
            pieces.append(x[at:a + 1])
            pieces.append(self.encode_image(pix))
            at = a + 1 + cfg.img_slots
        pieces.append(x[at:])
        return torch.cat(pieces, dim=0)

    def logits(self, tokens, images):
        cfg, p = self.cfg, self.p
        x = self.embed(tokens, images)
        cos, sin = rope_tables(cfg, x.shape[0], self.dtype)
        for L in range(cfg.num_hidden_layers):
            x = self.llm_block(L, x, cos, sin)
        x = rms_norm(x, p["transformer.ln_f.weight"], cfg.layer_norm_epsilon)
        return F.linear(x, p["lm_head.weight"])

    def sample_loss_sum(self, tokens, labels, images):
        """(sum of token losses, number of targets) of one sample; logits[t] -> labels[t+1]."""
        lg = self.logits(tokens, images)
        lab = torch.as_tensor(np.asarray(labels), dtype=torch.long)[1:]
        n = int((lab != IGNORE).sum())
        s = F.cross_entropy(lg[:-1], lab, ignore_index=IGNORE, reduction="sum")
        return s, n

    def microbatch_loss(self, samples):
        """HF mean over the micro-batch: sum of token losses / number of targets."""
        total, n = 0.0, 0
        for tokens, labels, images in samples:
            s, c = self.sample_loss_sum(tokens, labels, images)
            total = total + s
            n += c
        return total / n, n


# ----------------------------------------------------------------------------
# Random test weights
# ----------------------------------------------------------------------------
def random_weights(cfg, seed):
    """{name: float32 array} with every tensor random (LoRA B != 0, scale != 1), so
    every gradient is non-trivial, scaled to keep activations O(1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in param_shapes(cfg):
        leaf = name.rsplit(".", 1)[-1]
        if name.endswith("lora_scale"):
            a = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("lora_b.weight"):
            a = rng.normal(0.0, 0.5 / math.sqrt(shape[1]), shape)
        elif "ln_" in name and leaf == "weight":
            a = 1.0 + rng.normal(0.0, 0.1, shape)
        elif leaf in ("bias", "in_proj_bias") or "ln_" in name:
            a = rng.normal(0.0, 0.05, shape)
        elif name.endswith("positional_embedding") or name.endswith("pos_embed"):
            a = rng.normal(0.0, 0.3, shape)
        elif name.endswith("attn_pool.query") or name == "transformer.wte.weight":
            a = rng.normal(0.0, 1.0, shape)
        elif name.endswith("conv1.weight"):
            a = rng.normal(0.0, 1.0 / math.sqrt(numel(shape[1:])), shape)
        elif name == "transformer.visual.proj":
            a = rng.normal(0.0, 1.0 / math.sqrt(shape[0]), shape)
        else:  # [out, in] matrices
            a = rng.normal(0.0, 1.0 / math.sqrt(shape[-1]), shape)
        out[name] = a.astype(np.float32)
    return out


def write_model_dir(path, cfg_dict, weights, dtype="F32"):
    """A HF model directory: config.json + model.safetensors."""
    import os
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2)
    save_safetensors(os.path.join(path, "model.safetensors"), weights, dtype)


# ----------------------------------------------------------------------------
# The optimizer step the trainer implements (HF Trainer + DeepSpeed semantics)
# ----------------------------------------------------------------------------
def cosine_lambda(s, warmup, total, num_cycles=0.5):
    """HF get_cosine_schedule_with_warmup's factor at 0-based optimizer step s."""
    if s < warmup:
        return float(s) / float(max(1, warmup))
    progress = float(s - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))


def assign_groups(names, groups_cfg, default_wd):
    """Each name joins the first group whose glob patterns match it.
    Returns [(group name, [names], lr_scale, weight_decay)]; groups that stay empty
    are kept (empty). A name that matches no group is an error."""
    out = [(g["name"], [], float(g.get("lr_scale", 1.0)),
            float(g.get("weight_decay", default_wd))) for g in groups_cfg]
    for n in names:
        for gi, g in enumerate(groups_cfg):
            if any(glob_match(n, pat) for pat in g["patterns"]):
                out[gi][1].append(n)
                break
        else:
            raise ValueError("%s matches no parameter group" % n)
    return out


class ReferenceTrainer:
    """Optimizer steps as the C trainer runs them on one process: step s takes the
    micro-batches m = 0..GA-1 of samples (s*GA + m)*B + j (mod n, file order); the
    step loss is the mean of the micro-batch mean losses and is what is
    differentiated; clip_grad_norm_ over all trainable parameters; AdamW with
    per-group lr = lr * lr_scale * cosine_lambda(s)."""

    def __init__(self, model, train_cfg, trainable):
        self.m = model
        self.t = train_cfg
        self.B = int(train_cfg.get("train_micro_batch_size_per_gpu", 1))
        self.GA = int(train_cfg.get("gradient_accumulation_steps", 1))
        self.clip = float(train_cfg.get("gradient_clipping", 1.0))
        op = train_cfg.get("optimizer", {}).get("params", {})
        self.lr = float(op.get("lr", 1e-5))
        wd = float(op.get("weight_decay", 0.1))
        betas = tuple(op.get("betas", (0.9, 0.95)))
        eps = float(op.get("eps", 1e-8))
        sp = train_cfg.get("scheduler", {}).get("params", {})
        self.warmup = int(sp.get("warmup_num_steps", 0))
        self.total = int(sp.get("total_num_steps", 0))
        self.trainable = list(trainable)
        tset = set(trainable)
        for n, p in model.p.items():
            p.requires_grad_(n in tset)
        groups = train_cfg.get("param_groups") or [{"name": "all", "patterns": ["*"]}]
        self.groups = assign_groups(self.trainable, groups, wd)
        self.opt = torch.optim.AdamW(
            [{"params": [model.p[n] for n in names], "lr": self.lr * scale,
              "weight_decay": gwd, "base_lr": self.lr * scale, "name": gname}
             for gname, names, scale, gwd in self.groups if names],
            lr=self.lr, betas=betas, eps=eps, weight_decay=wd)

    def microbatches(self, s, samples):
        """The GA micro-batches of step s (0-based), each a list of B samples."""
        return [[samples[((s * self.GA + mi) * self.B + j) % len(samples)]
                 for j in range(self.B)] for mi in range(self.GA)]

    def step(self, s, samples):
        m = self.m
        for n in self.trainable:
            m.p[n].grad = None
        losses = []
        for batch in self.microbatches(s, samples):
            loss, _ = m.microbatch_loss(batch)
            (loss / self.GA).backward()
            losses.append(float(loss))
        params = [m.p[n] for n in self.trainable]
        norm = float(torch.nn.utils.clip_grad_norm_(params, self.clip)) if self.clip > 0 else \
            float(torch.norm(torch.stack([p.grad.norm() for p in params])))
        lam = cosine_lambda(s, self.warmup, self.total)
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * lam
        self.opt.step()
        return {"step": s + 1, "loss": sum(losses) / len(losses), "lr": self.lr * lam,
                "grad_norm": norm}
