"""The small kernels a decode step spends its time between matmuls in.

Shape legend: R rows (tokens), B batch, C model width, H query heads, G kv heads, D head dim,
L KV-cache capacity, E experts, K top-k.

Decoding one token runs each of these once per layer on a few hundred numbers. In NumPy every
one is a dozen array operations, each a microsecond or more of Python and dispatch overhead,
which adds up to more than the matmuls themselves once the weights are 4-bit. As one compiled
loop each, they cost about a call.

    rmsnorm         y = x / sqrt(mean(x^2) + eps) * w                 (as minimoe/nn/norm.py)
    attend_one      rotary positions on the new q, k; write k, v into the cache at `pos`;
                    softmax(q k^T / sqrt(D)) v over the cached positions (as minimoe/nn/attention.py)
    route           softmax / top-k / renormalise the router logits   (as minimoe/nn/router.py)

Not everything is faster compiled: SwiGLU's silu(a) * u stays NumPy (minimoe/nn/ffn.py), whose
tanh runs on SIMD units, while Numba calls the scalar libm tanh (measured 4x slower at F = 1408).

Each is a Numba kernel beside its NumPy twin, with the same signature; the checked wrappers at
the bottom validate shapes and dtypes before a kernel runs (Numba does not bounds-check), and
send anything that is not float32 to the twin (one compiled signature per kernel).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from minimoe.kernels.backend import get_backend, twin
from minimoe.kernels.packed import KernelInputError

ROUTERS = {"softmax_topk": 0, "topk_softmax": 1}   # the rules `route` implements


# ----------------------------------------------------------------------------------------------
# RMSNorm: x (R, C), w (C,) -> out (R, C)
# ----------------------------------------------------------------------------------------------

def rmsnorm_numpy(x, w, eps, out):
    ms = np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True)   # (R, 1) mean square
    out[:] = x * (1.0 / np.sqrt(ms + eps)).astype(x.dtype) * w        # (R, C)


@njit(inline="always")
def row_rstd(x, r, eps):
    """1 / sqrt(mean(x[r]^2) + eps) of row r of x (R, C), summed in float64, as float32. Shared by
    this RMSNorm and the training one (minimoe/kernels/train.py)."""
    C = x.shape[1]
    ms = 0.0                                             # float64 accumulator
    for c in range(C):
        ms += np.float64(x[r, c]) * x[r, c]
    return np.float32(1.0 / math.sqrt(ms / C + eps))


@twin(rmsnorm_numpy)
@njit(cache=True, nogil=True)
def rmsnorm(x, w, eps, out):
    R, C = x.shape
    for r in range(R):
        rstd = row_rstd(x, r, eps)
        for c in range(C):
            out[r, c] = x[r, c] * rstd * w[c]


# ----------------------------------------------------------------------------------------------
# Attention for one new position per sequence, over a KV cache.
#   q (B, H, D), k, v (B, G, D)   the new token's projections (before rotary positions)
#   cos, sin (D,)                 the rotation of position `pos`
#   kc, vc (B, G, L, D)           the cache; positions 0..pos-1 are filled, pos is written here
#   window                        0, or attend to the last `window` positions only
#   sinks (H,) or (0,)            an extra logit per head (gpt-oss), or none
#   out (B, H, D)
# ----------------------------------------------------------------------------------------------

def _rope_numpy(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)   # rotate_half
    return x * cos + rotated * sin


def attend_one_numpy(q, k, v, cos, sin, kc, vc, pos, window, sinks, out):
    B, H, D = q.shape
    G = k.shape[1]
    R = H // G
    kc[:, :, pos] = _rope_numpy(k, cos, sin)                         # (B, G, D) into the cache
    vc[:, :, pos] = v
    s0 = max(0, pos + 1 - window) if window else 0
    keys, values = kc[:, :, s0:pos + 1], vc[:, :, s0:pos + 1]        # (B, G, S, D)
    qg = _rope_numpy(q, cos, sin).reshape(B, G, R, D)                # (B, G, R, D)
    scores = np.einsum("bgrd,bgsd->bgrs", qg, keys) / np.float32(math.sqrt(D))   # (B, G, R, S)
    m = scores.max(axis=-1, keepdims=True)                           # (B, G, R, 1)
    if len(sinks):
        m = np.maximum(m, sinks.reshape(1, G, R, 1))
    e = np.exp(scores - m)
    z = e.sum(axis=-1, keepdims=True)
    if len(sinks):
        z = z + np.exp(sinks.reshape(1, G, R, 1) - m)               # the sink takes mass, has no value
    probs = e / z                                                    # (B, G, R, S)
    out[:] = np.einsum("bgrs,bgsd->bgrd", probs, values).reshape(B, H, D)


@twin(attend_one_numpy)
@njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"})
def attend_one(q, k, v, cos, sin, kc, vc, pos, window, sinks, out):
    B, H, D = q.shape
    G = k.shape[1]
    R = H // G
    half = D // 2
    scale = np.float32(1.0 / math.sqrt(D))
    s0 = max(0, pos + 1 - window) if window > 0 else 0
    S = pos + 1 - s0                                     # visible positions
    qr = np.empty((R, D), np.float32)                    # the R query heads that share kv head g
    p = np.empty((R, S), np.float32)                     # their scores, then probabilities
    acc = np.empty((R, D), np.float32)
    for b in range(B):
        for g in range(G):
            for i in range(half):                        # rotate the new key, store it and the value
                k1, k2 = k[b, g, i], k[b, g, half + i]
                kc[b, g, pos, i] = k1 * cos[i] - k2 * sin[i]
                kc[b, g, pos, half + i] = k2 * cos[half + i] + k1 * sin[half + i]
            for i in range(D):
                vc[b, g, pos, i] = v[b, g, i]
            for r in range(R):                           # rotate (and pre-scale) the R queries
                h = g * R + r
                for i in range(half):
                    q1, q2 = q[b, h, i], q[b, h, half + i]
                    qr[r, i] = (q1 * cos[i] - q2 * sin[i]) * scale
                    qr[r, half + i] = (q2 * cos[half + i] + q1 * sin[half + i]) * scale
            for s in range(S):                           # each cached key is read once, for R heads
                for r in range(R):
                    a = np.float32(0.0)
                    for i in range(D):
                        a += qr[r, i] * kc[b, g, s0 + s, i]
                    p[r, s] = a
            for r in range(R):                           # softmax over the positions (+ the sink)
                m = sinks[g * R + r] if len(sinks) else np.float32(-np.inf)
                for s in range(S):
                    m = max(m, p[r, s])
                z = np.exp(sinks[g * R + r] - m) if len(sinks) else np.float32(0.0)
                for s in range(S):
                    p[r, s] = np.exp(p[r, s] - m)
                    z += p[r, s]
                for s in range(S):
                    p[r, s] /= z
            acc[:] = 0.0
            for s in range(S):                           # the probability-weighted sum of values
                for r in range(R):
                    w = p[r, s]
                    for i in range(D):
                        acc[r, i] += w * vc[b, g, s0 + s, i]
            for r in range(R):
                for i in range(D):
                    out[b, g * R + r, i] = acc[r, i]


# ----------------------------------------------------------------------------------------------
# The router's selection: logits (R, E) -> weights (R, K), experts (R, K)
#   rule 0 "softmax_topk": probs = softmax(logits), keep the K largest (renorm: rescale to sum 1)
#   rule 1 "topk_softmax": keep the K largest logits, softmax over those K
#   then weights *= scale. Ties go to the lower expert index, as in router.top_k.
# ----------------------------------------------------------------------------------------------

def route_numpy(logits, K, rule, renorm, scale, weights, experts):
    z = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)        # (R, E)
    scores = probs if rule == 0 else logits
    top = np.argsort(-scores, axis=-1, kind="stable")[:, :K]          # (R, K)
    experts[:] = top
    g = np.take_along_axis(scores, top, axis=-1)                     # (R, K)
    if rule == 1:
        g = np.exp(g - g[:, :1]) / np.exp(g - g[:, :1]).sum(axis=-1, keepdims=True)
    elif renorm:
        g = g / g.sum(axis=-1, keepdims=True)
    weights[:] = g * scale


@twin(route_numpy)
@njit(cache=True, nogil=True)
def route(logits, K, rule, renorm, scale, weights, experts):
    R, E = logits.shape
    probs = np.empty(E, np.float32)
    for r in range(R):
        m = logits[r, 0]
        for e in range(E):
            m = max(m, logits[r, e])
        z = np.float32(0.0)
        for e in range(E):
            probs[e] = np.exp(logits[r, e] - m)
            z += probs[e]
        for e in range(E):
            probs[e] /= z
        for k in range(K):                               # K rounds of "largest not yet taken"
            best, best_score = -1, np.float32(0.0)
            for e in range(E):
                taken = False
                for j in range(k):
                    if experts[r, j] == e:
                        taken = True
                score = probs[e] if rule == 0 else logits[r, e]
                if not taken and (best < 0 or score > best_score):
                    best, best_score = e, score          # strict >: the lower index wins a tie
            experts[r, k] = best
        total = np.float32(0.0)
        for k in range(K):
            e = experts[r, k]
            if rule == 0:
                weights[r, k] = probs[e]
            else:
                weights[r, k] = np.exp(logits[r, e] - logits[r, experts[r, 0]])
            total += weights[r, k]
        for k in range(K):
            if rule == 1 or renorm:
                weights[r, k] /= total
            weights[r, k] *= scale


# ----------------------------------------------------------------------------------------------
# Checked entry points
# ----------------------------------------------------------------------------------------------

def _f32(*arrays) -> bool:
    """True when every array is float32 and the backend is numba: run the compiled kernel."""
    return get_backend() == "numba" and all(a.dtype == np.float32 for a in arrays)


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise KernelInputError(what)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x (..., C), w (C,) -> (..., C)."""
    _expect(x.ndim >= 1 and w.shape == x.shape[-1:],
            f"rms_norm: weight must have shape ({x.shape[-1]},) to match x {x.shape}, found {w.shape}")
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
    out = np.empty_like(x2)
    (rmsnorm.numba if _f32(x2, w) else rmsnorm.numpy)(x2, w.astype(x2.dtype, copy=False), float(eps), out)
    return out.reshape(x.shape)


def attend(q, k, v, cos, sin, kc, vc, pos: int, window: int = 0, sinks=None) -> np.ndarray:
    """One new position: q (B, H, D), k/v (B, G, D), cos/sin (D,), cache kc/vc (B, G, L, D) -> (B, H, D).
    Writes the rotated k and v into the cache at `pos`."""
    B, H, D = q.shape
    _expect(k.ndim == 3 and k.shape[0] == B and k.shape[2] == D and v.shape == k.shape,
            f"attend: k and v must be (B={B}, G, D={D}), found {k.shape} and {v.shape}")
    G = k.shape[1]
    _expect(G > 0 and H % G == 0, f"attend: {H} query heads must be a multiple of {G} kv heads")
    _expect(kc.ndim == 4 and kc.shape[:2] == (B, G) and kc.shape[3] == D and vc.shape == kc.shape,
            f"attend: caches must be (B={B}, G={G}, L, D={D}), found {kc.shape} and {vc.shape}")
    _expect(0 <= pos < kc.shape[2], f"attend: position {pos} outside the cache of {kc.shape[2]} positions")
    _expect(cos.shape == (D,) and sin.shape == (D,), f"attend: cos/sin must be ({D},), found {cos.shape}")
    _expect(D % 2 == 0, f"attend: head dim must be even for rotary positions, found {D}")
    _expect(kc.flags.c_contiguous and vc.flags.c_contiguous, "attend: caches must be C-contiguous")
    sinks = np.zeros(0, q.dtype) if sinks is None else np.ascontiguousarray(sinks, dtype=q.dtype)
    _expect(len(sinks) in (0, H), f"attend: sinks must be ({H},), found {sinks.shape}")
    out = np.empty((B, H, D), q.dtype)
    args = [np.ascontiguousarray(a, dtype=q.dtype) for a in (q, k, v, cos, sin)]
    fn = attend_one.numba if _f32(q, kc, vc) else attend_one.numpy
    fn(*args, kc, vc, int(pos), int(window or 0), sinks, out)
    return out


def route_topk(logits: np.ndarray, K: int, rule: str, renorm: bool, scale: float):
    """logits (R, E) -> (weights (R, K), experts (R, K) int64)."""
    _expect(rule in ROUTERS, f"route_topk: rule must be one of {', '.join(ROUTERS)}, found {rule!r}")
    _expect(logits.ndim == 2 and 0 < K <= logits.shape[1],
            f"route_topk: need logits (R, E) with 0 < K <= E, found {logits.shape} and K={K}")
    logits = np.ascontiguousarray(logits)
    R = logits.shape[0]
    weights, experts = np.empty((R, K), logits.dtype), np.empty((R, K), np.int64)
    fn = route.numba if _f32(logits) else route.numpy
    fn(logits, int(K), ROUTERS[rule], bool(renorm), logits.dtype.type(scale), weights, experts)
    return weights, experts
