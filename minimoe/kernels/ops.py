"""The small kernels a decode step spends its time in between matmuls: attention over the KV
cache, and the router's top-k.

Shape legend: B batch, H query heads, G kv heads, R = H/G, T new positions, S key positions,
D head dim, N tokens, E experts, K top-k.

    attend   softmax(q k^T / sqrt(D) + causal/window mask [+ sink]) v        (nn/attention.py)
    select   softmax / top-k / renormalise the router logits                 (nn/router.py)

Decoding one token runs each of these once per layer on a few hundred numbers. In NumPy each is a
dozen array operations, each a microsecond or more of Python and dispatch overhead, which adds up
to more than the matmuls themselves once the weights are 4-bit. As one compiled loop each, they
cost about a call. The NumPy twin of each is the function of the same name in minimoe/nn/, with
the same signature; minimoe/kernels/dispatch.py picks one. `attend` here keeps no probabilities,
so it serves only inference (no backward pass follows).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from minimoe.kernels.backend import configure_numba
from minimoe.kernels.packed import KernelInputError

configure_numba()

ROUTERS = {"softmax_topk": 0, "topk_softmax": 1}   # the rules `select` implements


# ----------------------------------------------------------------------------------------------
# Attention of the T newest positions over S keys (the KV cache, or the sequence itself)
#   q (B, H, T, D) rotated; k, v (B, G, L, D) of which positions 0..S-1 are used (a KV cache's
#   buffer); query t sits at position S - T + t
#   window: 0, or attend to the last `window` positions only; sinks (H,) or (0,); out (B, H, T, D)
# ----------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"})
def attend_rows(q, k, v, S, window, sinks, out):
    B, H, T, D = q.shape
    G = k.shape[1]
    R = H // G
    scale = np.float32(1.0 / math.sqrt(D))
    qr = np.empty((R, D), np.float32)                    # the R query heads that share kv head g
    p = np.empty((R, S), np.float32)                     # their scores, then probabilities
    acc = np.empty((R, D), np.float32)
    for b in range(B):
        for g in range(G):
            for t in range(T):
                pos = S - T + t
                s0 = max(0, pos + 1 - window) if window > 0 else 0
                n = pos + 1 - s0                         # visible keys
                for r in range(R):
                    for i in range(D):
                        qr[r, i] = q[b, g * R + r, t, i] * scale
                for s in range(n):                       # each visible key is read once, for R heads
                    for r in range(R):
                        a = np.float32(0.0)
                        for i in range(D):
                            a += qr[r, i] * k[b, g, s0 + s, i]
                        p[r, s] = a
                for r in range(R):                       # softmax over the positions (+ the sink)
                    m = sinks[g * R + r] if len(sinks) else np.float32(-np.inf)
                    for s in range(n):
                        m = max(m, p[r, s])
                    z = np.exp(sinks[g * R + r] - m) if len(sinks) else np.float32(0.0)
                    for s in range(n):
                        p[r, s] = np.exp(p[r, s] - m)
                        z += p[r, s]
                    for s in range(n):
                        p[r, s] /= z
                acc[:] = 0.0
                for s in range(n):                       # the probability-weighted sum of values
                    for r in range(R):
                        w = p[r, s]
                        for i in range(D):
                            acc[r, i] += w * v[b, g, s0 + s, i]
                for r in range(R):
                    for i in range(D):
                        out[b, g * R + r, t, i] = acc[r, i]


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise KernelInputError(what)


def _rows_of(a: np.ndarray) -> np.ndarray:
    """A C-contiguous (B, G, L, D) array whose first S = a.shape[2] positions are `a`: the KV
    cache's whole buffer when `a` is its filled part (no copy), else a copy. Numba compiles loops
    over C-contiguous arrays with unit-stride SIMD; over a strided view it cannot."""
    if a.flags.c_contiguous:
        return a
    base = a.base
    if (isinstance(base, np.ndarray) and base.ndim == 4 and base.flags.c_contiguous
            and base.strides == a.strides and base.shape[:2] == a.shape[:2] and base.shape[3] == a.shape[3]
            and base.__array_interface__["data"][0] == a.__array_interface__["data"][0]):
        return base
    return np.ascontiguousarray(a)


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, window: int, sinks):
    """q (B, H, T, D), k, v (B, G, S, D) -> (y (B, H, T, D), None, None); see nn/attention.py."""
    _expect(q.ndim == 4 and k.ndim == 4, f"attend: q and k must have 4 axes, found {q.shape} and {k.shape}")
    B, H, T, D = q.shape
    G, S = k.shape[1], k.shape[2]
    _expect(k.shape[0] == B and k.shape[3] == D and v.shape == k.shape,
            f"attend: k and v must be (B={B}, G, S, D={D}), found {k.shape} and {v.shape}")
    _expect(G > 0 and H % G == 0, f"attend: {H} query heads must be a multiple of {G} kv heads")
    _expect(1 <= T <= S, f"attend: {T} new positions need 1..{S} keys")
    sinks = np.zeros(0, np.float32) if sinks is None else np.ascontiguousarray(sinks, np.float32)
    _expect(len(sinks) in (0, H), f"attend: sinks must be ({H},), found {sinks.shape}")
    out = np.empty((B, H, T, D), np.float32)
    attend_rows(np.ascontiguousarray(q), _rows_of(k), _rows_of(v), S, int(window or 0), sinks, out)
    return out, None, None


# ----------------------------------------------------------------------------------------------
# The router's selection: logits (N, E) -> weights (N, K), experts (N, K), probs (N, E), g (N, K)
#   rule 0 "softmax_topk": probs = softmax(logits), keep the K largest (renorm: rescale to sum 1)
#   rule 1 "topk_softmax": keep the K largest logits, softmax over those K
#   then weights *= scale. Ties go to the lower expert index, as in nn/router.py's top_k.
# ----------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def select_rows(logits, K, rule, renorm, scale, weights, experts, probs, g):
    N, E = logits.shape
    for r in range(N):
        m = logits[r, 0]
        for e in range(E):
            m = max(m, logits[r, e])
        z = np.float32(0.0)
        for e in range(E):
            probs[r, e] = np.exp(logits[r, e] - m)
            z += probs[r, e]
        for e in range(E):
            probs[r, e] /= z
        for k in range(K):                               # K rounds of "largest not yet taken"
            best, best_score = -1, np.float32(0.0)
            for e in range(E):
                taken = False
                for j in range(k):
                    if experts[r, j] == e:
                        taken = True
                score = probs[r, e] if rule == 0 else logits[r, e]
                if not taken and (best < 0 or score > best_score):
                    best, best_score = e, score          # strict >: the lower index wins a tie
            experts[r, k] = best
            g[r, k] = best_score
        total = np.float32(0.0)
        for k in range(K):
            weights[r, k] = g[r, k] if rule == 0 else np.exp(g[r, k] - g[r, 0])
            total += weights[r, k]
        for k in range(K):
            if rule == 1 or renorm:
                weights[r, k] /= total
            weights[r, k] *= scale


def select(logits: np.ndarray, K: int, rule: str, renorm: bool, scale: float, groups: int = 1,
           topk_groups: int = 1, bias: np.ndarray | None = None):
    """logits (N, E) -> (weights (N, K), experts (N, K) int64, probs (N, E), g (N, K));
    see nn/router.py. DeepSeek's group-limited choice and correction bias run in its NumPy twin."""
    _expect(rule in ROUTERS, f"select: rule must be one of {', '.join(ROUTERS)}, found {rule!r}")
    _expect(groups == 1 and bias is None, "select: the compiled router takes plain top-k only "
            f"(found groups={groups}, a correction bias: {bias is not None})")
    _expect(logits.ndim == 2 and 0 < K <= logits.shape[1],
            f"select: need logits (N, E) with 0 < K <= E, found {logits.shape} and K={K}")
    logits = np.ascontiguousarray(logits)
    N, E = logits.shape
    weights, experts = np.empty((N, K), logits.dtype), np.empty((N, K), np.int64)
    probs, g = np.empty((N, E), logits.dtype), np.empty((N, K), logits.dtype)
    select_rows(logits, int(K), ROUTERS[rule], bool(renorm), logits.dtype.type(scale), weights, experts,
                probs, g)
    return weights, experts, probs, g
