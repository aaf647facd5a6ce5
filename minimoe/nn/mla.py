"""Multi-head latent attention (MLA; DeepSeek-V2, 2024, and DeepSeek-V3, 2024), causal, with RoPE.

Shape legend: B batch, T new positions, S key positions (cached + new), C d_model, H heads,
Rq q_lora_rank, Rkv kv_lora_rank, Dn qk_nope_head_dim, Dr qk_rope_head_dim, Dv v_head_dim,
Dq = Dn + Dr (a query's or key's length).

Keys and values are not projected from x. Each token is compressed into ONE latent vector c (Rkv),
shared by all heads, and one rotary key k_rot (Dr), also shared; every head then decompresses its
own key and value from c:

    q = x Wq,  or low-rank:  q = RMSNorm(x Wq_a) Wq_b            (B, T, H*Dq)
    q = [q_nope, q_rot]  per head                                (B, H, T, Dn), (B, H, T, Dr)
    [c, k_rot] = x Wkv_a;  c = RMSNorm(c)                         (B, T, Rkv), (B, T, Dr)
    [k_nope, v] = c Wkv_b  per head                               (B, H, S, Dn), (B, H, S, Dv)
    q_rot, k_rot <- RoPE                                          "decoupled": position enters only
                                                                  the Dr rotary channels
    k = [k_nope, k_rot]  (k_rot the same for every head)
    P = softmax(q . k * scale + causal mask);  y = P v;  out = y Wo

Only c and k_rot need caching (minimoe/nn/latent_kv_cache.py): Rkv + Dr numbers per token and
layer. The softmax attention itself is nn/attention.py's `attend`, as for every other model. The two latent norms use eps 1e-6 whatever rms_norm_eps is (transformers builds them with
RMSNorm's default). DeepSeek's checkpoints store the rotary channels as interleaved pairs
(x0, x1), (x2, x3), ... (`rope_interleave`); we put them in rotate-half order first
([x0, x2, ...], [x1, x3, ...]), which permutes q_rot and k_rot alike and so leaves q . k as it was.

The softmax scale is 1/sqrt(Dq), times mscale^2 under YaRN with `mscale_all_dim` (DeepSeek's
longer context: mscale = 0.1 mscale_all_dim ln(factor) + 1).

Two forms compute the same attention:
  * naive (`forward`, absorb=False): decompress k_nope and v for all S positions, then run plain
    multi-head attention over k = [k_nope, k_rot] and v. Training uses it; it has the backward pass.
  * absorbed (absorb=True, what decoding uses): fold Wkv_b into the query and the output. With
    Wkv_b viewed per head as [W_uk (Dn, Rkv); W_uv (Dv, Rkv)],
        q_nope . k_nope = q_nope . (W_uk c) = (q_nope W_uk) . c        score against c itself
        P v             = P (c W_uv^T)      = (P c) W_uv^T             mix c, then decompress once
    so it is multi-QUERY attention (one key [c | k_rot] and one value c per position, shared by
    all H heads) over the cached latents: nothing per head is built for the S positions.

`p` holds one layer's parameters by short name: "q.weight" or "q_a.weight", "q_a_norm.weight",
"q_b.weight"; "kv_a.weight", "kv_a_norm.weight", "kv_b.weight", "o.weight" (+ "o.bias").
"""
from __future__ import annotations

import math

import numpy as np

from minimoe.config import Config
from minimoe.nn import linear, norm, rope
from minimoe.nn.attention import ATTEND, SOFTMAX_BACKWARD
from minimoe.nn.latent_kv_cache import LatentKVCache
from minimoe.nn.linear import as_float

LATENT_NORM_EPS = 1e-6


def softmax_scale(cfg: Config) -> float:
    """1/sqrt(Dq), times YaRN's mscale(factor, mscale_all_dim)^2 when rope_scaling has mscale_all_dim."""
    scale = (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) ** -0.5
    s = cfg.rope_scaling or {}
    if s.get("type", s.get("rope_type")) == "yarn" and s.get("mscale_all_dim"):
        m = rope.yarn_mscale(float(s["factor"]), float(s["mscale_all_dim"]))
        scale *= m * m
    return scale


def deinterleave(x: np.ndarray) -> np.ndarray:
    """(..., Dr) pairs (x0, x1), (x2, x3), ... -> rotate-half order [x0, x2, ..., x1, x3, ...]."""
    return np.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)


def interleave(x: np.ndarray) -> np.ndarray:
    """The inverse of deinterleave: [a0, a1, ..., b0, b1, ...] -> (a0, b0), (a1, b1), ..."""
    half = x.shape[-1] // 2
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = x[..., :half], x[..., half:]
    return out


def _project(x: np.ndarray, p: dict, cfg: Config, cos: np.ndarray, sin: np.ndarray):
    """x (B, T, C) -> q_nope (B, H, T, Dn), q_rot (B, H, T, Dr), c (B, T, Rkv), k_rot (B, T, Dr),
    and the caches of the projections for backward. Shared by both forms."""
    B, T, C = x.shape
    H, Dn, Dr, Rkv = cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.kv_lora_rank
    Dq = Dn + Dr
    if "q_a.weight" in p:                                # low-rank q (V3; V2-Lite has none)
        cq, qa_lin = linear.forward(x, p["q_a.weight"], name="attn.q_a")         # (B, T, C) -> (B, T, Rq)
        cq, qa_norm = norm.forward(cq, p["q_a_norm.weight"], LATENT_NORM_EPS, name="attn.q_a_norm")
        q, qb_lin = linear.forward(cq, p["q_b.weight"], name="attn.q_b")         # (B, T, Rq) -> (B, T, H*Dq)
        q_caches = (qa_lin, qa_norm, qb_lin)
    else:
        q, q_lin = linear.forward(x, p["q.weight"], name="attn.q")               # (B, T, C) -> (B, T, H*Dq)
        q_caches = (q_lin,)
    q = q.reshape(B, T, H, Dq).transpose(0, 2, 1, 3)     # (B, T, H*Dq) -> (B, H, T, Dq)
    q_nope, q_rot = q[..., :Dn], q[..., Dn:]             # (B, H, T, Dn), (B, H, T, Dr)

    ckv, kva_lin = linear.forward(x, p["kv_a.weight"], name="attn.kv_a")         # (B, T, C) -> (B, T, Rkv+Dr)
    c, k_rot = ckv[..., :Rkv], ckv[..., Rkv:]            # (B, T, Rkv), (B, T, Dr)
    c, c_norm = norm.forward(np.ascontiguousarray(c), p["kv_a_norm.weight"], LATENT_NORM_EPS,
                             name="attn.kv_a_norm")      # (B, T, Rkv)

    if cfg.rope_interleave:                              # DeepSeek's pairs -> rotate-half order
        q_rot, k_rot = deinterleave(q_rot), deinterleave(k_rot)
    q_rot, q_rope = rope.forward(np.ascontiguousarray(q_rot), cos, sin)  # (B, H, T, Dr)
    k_rot, k_rope = rope.forward(np.ascontiguousarray(k_rot), cos, sin)  # (B, T, Dr), one for all heads
    caches = dict(q_proj=q_caches, kva_lin=kva_lin, c_norm=c_norm, q_rope=q_rope, k_rope=k_rope)
    return np.ascontiguousarray(q_nope), q_rot, c, k_rot, caches


def split_kv_b(w_kvb, cfg: Config, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Wkv_b (H*(Dn+Dv), Rkv) per head: (W_uk (H, Dn, Rkv), W_uv (H, Dv, Rkv))."""
    W = as_float(w_kvb, dtype).reshape(cfg.n_heads, cfg.qk_nope_head_dim + cfg.v_head_dim, -1)
    return W[:, :cfg.qk_nope_head_dim], W[:, cfg.qk_nope_head_dim:]   # (H, Dn, Rkv), (H, Dv, Rkv)


def forward(x: np.ndarray, p: dict, cfg: Config, layer: int, cos: np.ndarray, sin: np.ndarray,
            kv: LatentKVCache | None = None, absorb: bool = False):
    """x (B, T, C) -> (out (B, T, C), cache). cos/sin (T, Dr) rotate these T positions. With a
    latent KV cache the new c and k_rot are appended and attention spans every cached position.
    absorb=True computes the absorbed form (inference only: its cache has no backward).

    Both forms hand the softmax attention to nn/attention.py's `attend` (which divides the scores
    by sqrt of the query width, so q is first scaled by softmax_scale * sqrt(width))."""
    B, T, C = x.shape
    H, Dn, Dv, Rkv = cfg.n_heads, cfg.qk_nope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
    q_nope, q_rot, c, k_rot, caches = _project(x, p, cfg, cos, sin)
    if kv is not None:
        latent = kv.write(layer, c, k_rot)               # (B, S, Rkv+Dr): [c | k_rot], S = cached + T
    else:
        latent = np.concatenate([c, k_rot], axis=-1)     # (B, T, Rkv+Dr)
    S = latent.shape[1]
    scale = softmax_scale(cfg)

    if absorb:
        # (the two per-head products with the folded weights are plain NumPy: a trace does not count them)
        W_uk, W_uv = split_kv_b(p["kv_b.weight"], cfg, x.dtype)   # (H, Dn, Rkv), (H, Dv, Rkv)
        q_lat = q_nope @ W_uk                            # (B,H,T,Dn) @ (H,Dn,Rkv) -> (B,H,T,Rkv)
        q = np.concatenate([q_lat, q_rot], axis=-1)      # (B, H, T, Rkv+Dr): scores against [c | k_rot]
        q *= q.dtype.type(scale * math.sqrt(Rkv + cfg.qk_rope_head_dim))
        # multi-query attention over the latents: ONE key [c | k_rot] and ONE value c per position
        o_lat, probs, _ = ATTEND(q, latent[:, None], latent[:, None, :, :Rkv], 0, None, name="attn")  # (B, H, T, Rkv)
        y = o_lat @ W_uv.swapaxes(-1, -2)                # (B,H,T,Rkv) @ (H,Rkv,Dv) -> (B,H,T,Dv)
        attn_cache = dict(absorbed=True)
    else:
        c_all, k_rot_all = latent[..., :Rkv], latent[..., Rkv:]  # (B, S, Rkv), (B, S, Dr)
        kv_up, kvb_lin = linear.forward(c_all, p["kv_b.weight"], name="attn.kv_b")  # (B, S, Rkv) -> (B, S, H*(Dn+Dv))
        kv_up = kv_up.reshape(B, S, H, Dn + Dv).transpose(0, 2, 1, 3)  # (B, H, S, Dn+Dv)
        k = np.concatenate([kv_up[..., :Dn],             # (B, H, S, Dn) per head, decompressed
                            np.broadcast_to(k_rot_all[:, None], (B, H, S, k_rot_all.shape[-1]))],
                           axis=-1)                      # (B, H, S, Dq): the rotary part shared
        v = np.ascontiguousarray(kv_up[..., Dn:])        # (B, H, S, Dv)
        q = np.concatenate([q_nope, q_rot], axis=-1)     # (B, H, T, Dq)
        q *= q.dtype.type(scale * math.sqrt(q.shape[-1]))
        y, probs, _ = ATTEND(q, k, v, 0, None, name="attn")  # (B, H, T, Dv), probs (B, H, 1, T, S)
        attn_cache = dict(absorbed=False, kvb_lin=kvb_lin, q=q, k=k, v=v, probs=probs)
    y = y.transpose(0, 2, 1, 3).reshape(B, T, H * Dv)    # (B, H, T, Dv) -> (B, T, H*Dv)
    out, o_lin = linear.forward(y, p["o.weight"], p.get("o.bias"), name="attn.o")  # (B, T, H*Dv) -> (B, T, C)
    cache = dict(caches, **attn_cache, scale=scale, o_lin=o_lin, shape=(B, T, H, Dn, Dv),
                 interleave=cfg.rope_interleave)
    return out, cache


def backward(dout: np.ndarray, cache):
    """dout (B, T, C) -> (dx (B, T, C), grads of this layer's parameters). The naive form, no KV
    cache (training): S == T."""
    if cache["absorbed"]:
        raise ValueError("mla.backward needs the naive form's cache: call forward with absorb=False")
    B, T, H, Dn, Dv = cache["shape"]
    grads = {}
    # out = y Wo (+ bo)
    dy, grads["o.weight"], dbo = linear.backward(dout, cache["o_lin"])  # dy (B, T, H*Dv)
    if dbo is not None:
        grads["o.bias"] = dbo
    dy = dy.reshape(B, T, H, Dv).transpose(0, 2, 1, 3)   # (B, H, T, Dv)
    # y = P v
    q, k, v = cache["q"], cache["k"], cache["v"]         # q already scaled (see forward)
    probs = cache["probs"].reshape(B, H, T, T)           # (B, H, 1, T, S) -> (B, H, T, S)
    dprobs = dy @ v.swapaxes(-1, -2)                     # (B,H,T,Dv) @ (B,H,Dv,S) -> (B,H,T,S)
    dv = probs.swapaxes(-1, -2) @ dy                     # (B,H,S,T) @ (B,H,T,Dv) -> (B,H,S,Dv)
    # P = softmax(q . k / sqrt(Dq)): dscores = P * (dP - sum_s dP * P)
    dscores, _ = SOFTMAX_BACKWARD(dprobs.reshape(-1, T), np.ascontiguousarray(probs.reshape(-1, T)))
    dscores = dscores.reshape(B, H, T, T) * (1.0 / math.sqrt(q.shape[-1]))  # d(q . k)
    dq = dscores @ k                                     # (B,H,T,S) @ (B,H,S,Dq) -> (B,H,T,Dq)
    dk = dscores.swapaxes(-1, -2) @ q                    # (B,H,S,T) @ (B,H,T,Dq) -> (B,H,S,Dq)
    dq *= dq.dtype.type(cache["scale"] * math.sqrt(q.shape[-1]))  # through the scaling of q
    dq_nope, dq_rot = dq[..., :Dn], dq[..., Dn:]         # (B, H, T, Dn), (B, H, T, Dr)
    dk_nope, dk_rot = dk[..., :Dn], dk[..., Dn:].sum(axis=1)  # (B, H, S, Dn); (B, S, Dr): one for all heads
    # [k_nope, v] = c Wkv_b
    dkv_up = np.concatenate([dk_nope, dv], axis=-1)      # (B, H, S, Dn+Dv)
    dkv_up = dkv_up.transpose(0, 2, 1, 3).reshape(B, T, H * (Dn + Dv))  # (B, S, H*(Dn+Dv))
    dc, grads["kv_b.weight"], _ = linear.backward(dkv_up, cache["kvb_lin"])  # (B, S, Rkv)
    # rotary positions (and DeepSeek's pair order)
    dq_rot = rope.backward(np.ascontiguousarray(dq_rot), cache["q_rope"])  # (B, H, T, Dr)
    dk_rot = rope.backward(dk_rot, cache["k_rope"])      # (B, T, Dr)
    if cache["interleave"]:
        dq_rot, dk_rot = interleave(dq_rot), interleave(dk_rot)
    # c = RMSNorm(latent); [latent, k_rot] = x Wkv_a
    dc, grads["kv_a_norm.weight"] = norm.backward(dc, cache["c_norm"])
    dckv = np.concatenate([dc, dk_rot], axis=-1)         # (B, T, Rkv+Dr)
    dx, grads["kv_a.weight"], _ = linear.backward(dckv, cache["kva_lin"])
    # q = [q_nope, q_rot]
    dq = np.concatenate([dq_nope, dq_rot], axis=-1)      # (B, H, T, Dq)
    dq = dq.transpose(0, 2, 1, 3).reshape(B, T, -1)      # (B, T, H*Dq)
    if len(cache["q_proj"]) == 3:                        # q = RMSNorm(x Wq_a) Wq_b
        qa_lin, qa_norm, qb_lin = cache["q_proj"]
        dcq, grads["q_b.weight"], _ = linear.backward(dq, qb_lin)
        dcq, grads["q_a_norm.weight"] = norm.backward(dcq, qa_norm)
        dxq, grads["q_a.weight"], _ = linear.backward(dcq, qa_lin)
    else:
        dxq, grads["q.weight"], _ = linear.backward(dq, cache["q_proj"][0])
    return dx + dxq, grads
