"""Causal grouped-query self-attention with rotary positions and an optional KV cache.

Shape legend: B batch, T new positions, S key positions (cached + new), C d_model,
H query heads, G kv heads, R = H/G query heads per kv head, D head dim.

    q = x Wq, k = x Wk, v = x Wv                  projections (+ biases with qkv_bias)
    q, k <- RMSNorm(q), RMSNorm(k)                 optional ("full": over H*D, "head": over D)
    q, k <- RoPE(q), RoPE(k)                       rotate by position
    P = softmax(q k^T / sqrt(D) + mask)            causal, optionally a sliding window,
                                                   optionally with one "sink" logit per head
    y = P v, out = y Wo                            (+ bias with o_bias)

Grouped-query attention (Ainslie et al., 2023): kv head g serves query heads g*R .. g*R+R-1,
so q is viewed as (B, G, R, T, D) and each group shares one (B, G, 1, S, D) key tensor.

Attention sinks (gpt-oss): a per-head logit joins the softmax and takes probability mass,
so a head may attend to "nothing"; its column is dropped after the softmax.

`p` holds one layer's attention parameters by short name: "q.weight", "k.weight", "v.weight",
"o.weight", and where the config has them "q.bias", ..., "q_norm.weight", "k_norm.weight", "sinks".
"""
from __future__ import annotations

import math

import numpy as np

from minimoe.config import Config
from minimoe.kernels.dispatch import Leaf, all_float32, in_inference
from minimoe.nn import linear, norm, rope
from minimoe.nn.kv_cache import KVCache


def causal_mask(T: int, S: int, window: int = 0) -> np.ndarray:
    """(T, S) bool, True where query t (at absolute position S-T+t) may see key s."""
    q_pos = np.arange(S - T, S)[:, None]                 # (T, 1)
    k_pos = np.arange(S)[None, :]                        # (1, S)
    allowed = k_pos <= q_pos                             # (T, S) causal
    if window:
        allowed &= q_pos - k_pos < window                # (T, S) at most `window` keys, self included
    return allowed


def mask_bias(mask: np.ndarray, dtype) -> np.ndarray:
    """(T, S) bool -> (T, S) of 0 where allowed and -inf where masked, to add to the scores."""
    return np.where(mask, dtype.type(0), dtype.type(-np.inf))


def softmax_with_sinks(scores, sinks, G, R):
    """softmax over the last axis of scores (B, G, R, T, S), with an extra per-head logit if
    `sinks` (H,) is given. Returns (probs (B, G, R, T, S), sink probs (B, G, R, T, 1) or None).
    Works in place: `scores` is overwritten and returned as the probabilities."""
    m = scores.max(axis=-1, keepdims=True)               # (B, G, R, T, 1) row max, for stability
    if sinks is not None:
        s = sinks.astype(scores.dtype).reshape(1, G, R, 1, 1)  # (H,) -> (1, G, R, 1, 1)
        m = np.maximum(m, s)                             # (B, G, R, T, 1)
    e = scores
    e -= m
    np.exp(e, out=e)                                     # (B, G, R, T, S); exp(-inf) = 0 where masked
    z = e.sum(axis=-1, keepdims=True)                    # (B, G, R, T, 1)
    if sinks is None:
        e /= z
        return e, None
    e_sink = np.exp(s - m)                               # (B, G, R, T, 1)
    z += e_sink
    e /= z
    return e, e_sink / z


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, window: int, sinks: np.ndarray | None):
    """Softmax attention of the T newest positions over all S keys, causal (and windowed):
    q (B, H, T, D) at positions S-T .. S-1, k (B, G, S, D), v (B, G, S, Dv)
    -> (y (B, H, T, Dv), probs (B, G, R, T, S), sink probs (B, G, R, T, 1) or None).
    (Dv is D here; DeepSeek's latent attention, nn/mla.py, has values of another width.)"""
    B, H, T, D = q.shape
    G, S = k.shape[1], k.shape[2]
    R = H // G
    qs = q.reshape(B, G, R, T, D) * q.dtype.type(1.0 / math.sqrt(D))  # (B, G, R, T, D) q / sqrt(D):
                                                         # scaling q is cheaper than scaling the (T, S) scores
    scores = qs @ k[:, :, None].swapaxes(-1, -2)         # (B,G,R,T,D) @ (B,G,1,D,S) -> (B,G,R,T,S)
    scores += mask_bias(causal_mask(T, S, window), scores.dtype)  # + (T, S): -inf where masked
    probs, sink_probs = softmax_with_sinks(scores, sinks, G, R)  # overwrites scores
    y = probs @ v[:, :, None]                            # (B,G,R,T,S) @ (B,G,1,S,Dv) -> (B,G,R,T,Dv)
    return y.reshape(B, H, T, v.shape[-1]), probs, sink_probs


# The compiled kernel keeps no probabilities, so it serves only calls with no backward to follow,
# and only a few new positions (a prefill's (T, S) blocks are BLAS work).
ATTEND = Leaf("attention", attend, "minimoe.kernels.ops:attend",
              when=lambda q, k, v, window, sinks: in_inference() and q.shape[2] <= 8
              and v.shape == k.shape and all_float32(q, k, v, sinks))


def forward(x: np.ndarray, p: dict, cfg: Config, layer: int, cos: np.ndarray, sin: np.ndarray,
            kv: KVCache | None = None):
    """x (B, T, C) -> out (B, T, C). cos/sin (T, D) are the rotations of these T positions.
    With a KV cache, the new keys/values are appended and attention spans all cached positions."""
    B, T, C = x.shape
    H, G, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim

    # q, k and v all read x: one leaf computes the three products (the NumPy twin one after the
    # other; a decode step's packed weights in one kernel call, nn/linear.py's forward_many)
    (q, k, v), (q_lin, k_lin, v_lin) = linear.forward_many(
        x, [p["q.weight"], p["k.weight"], p["v.weight"]], [p.get("q.bias"), p.get("k.bias"), p.get("v.bias")],
        names=("attn.q", "attn.k", "attn.v"))    # (B, T, C) -> (B, T, H*D), (B, T, G*D), (B, T, G*D)
    q_norm = k_norm = None
    if cfg.qk_norm == "full":                            # OLMoE: normalise the whole projection
        q, q_norm = norm.forward(q, p["q_norm.weight"], cfg.norm_eps, name="attn.q_norm")
        k, k_norm = norm.forward(k, p["k_norm.weight"], cfg.norm_eps, name="attn.k_norm")
    q = q.reshape(B, T, H, D).transpose(0, 2, 1, 3)      # (B, T, H*D) -> (B, H, T, D)
    k = k.reshape(B, T, G, D).transpose(0, 2, 1, 3)      # (B, T, G*D) -> (B, G, T, D)
    v = v.reshape(B, T, G, D).transpose(0, 2, 1, 3)      # (B, T, G*D) -> (B, G, T, D)
    if cfg.qk_norm == "head":                            # Qwen3: normalise each head
        q, q_norm = norm.forward(q, p["q_norm.weight"], cfg.norm_eps, name="attn.q_norm")
        k, k_norm = norm.forward(k, p["k_norm.weight"], cfg.norm_eps, name="attn.k_norm")
    q, q_rope = rope.forward(q, cos, sin)                # (B, H, T, D)
    k, k_rope = rope.forward(k, cos, sin)                # (B, G, T, D)

    if kv is not None:
        k_all, v_all = kv.write(layer, k, v)             # (B, G, S, D), S = cached + T
    else:
        k_all, v_all = k, v                              # (B, G, T, D)
    y, probs, sink_probs = ATTEND(q, k_all, v_all, cfg.window(layer), p.get("sinks"), name="attn")
    y = y.transpose(0, 2, 1, 3).reshape(B, T, H * D)     # (B, H, T, D) -> (B, T, H*D)
    out, o_lin = linear.forward(y, p["o.weight"], p.get("o.bias"), name="attn.o")  # (B, T, H*D) -> (B, T, C)

    cache = dict(q_lin=q_lin, k_lin=k_lin, v_lin=v_lin, q_norm=q_norm, k_norm=k_norm,
                 q_rope=q_rope, k_rope=k_rope, q=q, k=k_all, v=v_all, probs=probs,
                 sink_probs=sink_probs, o_lin=o_lin, shape=(B, T, H, G, D),
                 qk_norm=cfg.qk_norm, has_sinks="sinks" in p)
    return out, cache


def backward(dout: np.ndarray, cache):
    """dout (B, T, C) -> (dx (B, T, C), grads: dict of this layer's parameter gradients).
    Training only (no KV cache): S == T."""
    B, T, H, G, D = cache["shape"]
    R = H // G
    grads = {}
    # out = y Wo (+ bo)
    dy, grads["o.weight"], dbo = linear.backward(dout, cache["o_lin"])  # dy (B, T, H*D)
    if dbo is not None:
        grads["o.bias"] = dbo
    dy = dy.reshape(B, T, H, D).transpose(0, 2, 1, 3).reshape(B, G, R, T, D)  # (B, G, R, T, D)
    # y = P v
    probs, v = cache["probs"], cache["v"]
    dprobs = dy @ v[:, :, None].swapaxes(-1, -2)         # (B,G,R,T,D) @ (B,G,1,D,S) -> (B,G,R,T,S)
    dv = (probs.swapaxes(-1, -2) @ dy).sum(axis=2)       # (B,G,R,S,T) @ (B,G,R,T,D) -> (B,G,S,D)
    # P = softmax([scores, sink]); the sink column gets no gradient from y (it has no value):
    # dscores = P * (dP - sum_s dP * P), built in place on dprobs
    S = probs.shape[-1]
    dscores, inner = SOFTMAX_BACKWARD(dprobs.reshape(-1, S), probs.reshape(-1, S))  # one pass per row
    dscores, inner = dscores.reshape(probs.shape), inner.reshape(*probs.shape[:-1], 1)  # (B, G, R, T, S), (B, G, R, T, 1)
    if cache["has_sinks"]:
        dsink = -(cache["sink_probs"] * inner)           # (B, G, R, T, 1)
        grads["sinks"] = dsink.sum(axis=(0, 3, 4)).reshape(H)  # (G, R) -> (H,)
    # scores = (q / sqrt(D)) k^T
    scale = 1.0 / math.sqrt(D)
    qs, k = cache["q"].reshape(B, G, R, T, D) * scale, cache["k"]  # (B, G, R, T, D)
    dq = dscores @ k[:, :, None]                         # (B,G,R,T,S) @ (B,G,1,S,D) -> (B,G,R,T,D)
    dq *= dq.dtype.type(scale)                           # through the scaling of q
    dk = (dscores.swapaxes(-1, -2) @ qs).sum(axis=2)     # (B,G,R,S,T) @ (B,G,R,T,D) -> (B,G,S,D)
    dq = dq.reshape(B, H, T, D)
    # rotary positions, then the per-head norms
    dq = rope.backward(dq, cache["q_rope"])
    dk = rope.backward(dk, cache["k_rope"])
    if cache["qk_norm"] == "head":
        dq, grads["q_norm.weight"] = norm.backward(dq, cache["q_norm"])
        dk, grads["k_norm.weight"] = norm.backward(dk, cache["k_norm"])
    dq = dq.transpose(0, 2, 1, 3).reshape(B, T, H * D)   # (B, H, T, D) -> (B, T, H*D)
    dk = dk.transpose(0, 2, 1, 3).reshape(B, T, G * D)   # (B, G, T, D) -> (B, T, G*D)
    dv = dv.transpose(0, 2, 1, 3).reshape(B, T, G * D)
    if cache["qk_norm"] == "full":
        dq, grads["q_norm.weight"] = norm.backward(dq, cache["q_norm"])
        dk, grads["k_norm.weight"] = norm.backward(dk, cache["k_norm"])
    # the three projections all read x
    dx = None
    for name, d in (("q", dq), ("k", dk), ("v", dv)):
        dxi, grads[f"{name}.weight"], db = linear.backward(d, cache[f"{name}_lin"])
        if db is not None:
            grads[f"{name}.bias"] = db
        if dx is None:
            dx = dxi
        else:
            dx += dxi
    return dx, grads


def softmax_backward(dprobs: np.ndarray, probs: np.ndarray):
    """Rows of a softmax: dprobs, probs (N, S) -> (dscores (N, S), inner (N,)), where
    dscores = probs * (dprobs - inner) and inner = sum_s dprobs * probs. Overwrites dprobs."""
    inner = np.einsum("ns,ns->n", dprobs, probs)         # (N,)
    dprobs -= inner[:, None]
    dprobs *= probs                                      # (N, S); masked entries (probs 0) stay 0
    return dprobs, inner


SOFTMAX_BACKWARD = Leaf(None, softmax_backward, "minimoe.kernels.train:softmax_backward")
