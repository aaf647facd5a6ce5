"""Fused elementwise passes of a training step: RMSNorm, RoPE and the softmax backward.

Shape legend: R rows (tokens), C width, B batch, H heads, T positions, D head dim, S keys.

A training step of a small model spends as long in elementwise NumPy as in its matrix products.
Three layers do many short passes over rows only C = 128 or D = 32 wide, where NumPy's per-call
cost dominates. Each becomes one compiled loop here:

    rmsnorm_forward    xhat = x * rstd, rstd = 1 / sqrt(mean(x^2) + eps), y = xhat * w
    rmsnorm_backward   dw = sum_rows dy * xhat,  dx = rstd * (dy w - xhat * mean(dy w * xhat))
    rope_forward       y = x * cos + rotate_half(x) * sin         (x: (B, H, T, D), any strides)
    rope_backward      dx = dy * cos + rotate_half^T(dy * sin)
    softmax_backward   dS = P * (dP - sum_s dP * P), written over dP

The reference for each is the NumPy code in minimoe/nn/ (norm.py, rope.py, attention.py), which
runs for float64 (the gradient checks), for MINIMOE_BACKEND=numpy, and as each kernel's twin
below; tests/test_kernels_train.py checks the two agree on odd shapes. Not compiled: anything
with exp or tanh (softmax forward, SwiGLU). Numba calls the scalar libm for those, while NumPy
runs them on SIMD units (see minimoe/kernels/ops.py).

Every kernel releases the GIL (nogil=True), so the trainer's shard threads run them at once.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from minimoe.kernels.backend import get_backend, twin
from minimoe.kernels.ops import row_rstd


# ----------------------------------------------------------------------------------------------
# RMSNorm over rows: x (R, C), w (C,)
# ----------------------------------------------------------------------------------------------

def rmsnorm_forward_numpy(x, w, eps, y, xhat, rstd):
    """-> writes y (R, C), xhat (R, C), rstd (R, 1)."""
    C = x.shape[1]
    rstd[:] = 1.0 / np.sqrt(np.einsum("rc,rc->r", x, x)[:, None] / C + eps)   # (R, 1)
    xhat[:] = x * rstd                                                          # (R, C)
    y[:] = xhat * w                                                             # (R, C)


@twin(rmsnorm_forward_numpy)
@njit(cache=True, nogil=True)
def rmsnorm_forward(x, w, eps, y, xhat, rstd):
    R, C = x.shape
    for r in range(R):
        s = row_rstd(x, r, eps)                          # the decode RMSNorm's, float64 sum
        rstd[r, 0] = s
        for c in range(C):
            xh = x[r, c] * s
            xhat[r, c] = xh
            y[r, c] = xh * w[c]


def rmsnorm_backward_numpy(dy, xhat, rstd, w, dx, dw):
    """-> writes dx (R, C) and dw (C,)."""
    C = xhat.shape[1]
    dw[:] = np.einsum("rc,rc->c", dy, xhat)                                     # (C,)
    dxhat = dy * w                                                              # (R, C)
    proj = np.einsum("rc,rc->r", dxhat, xhat)[:, None] / C                      # (R, 1)
    dx[:] = (dxhat - xhat * proj) * rstd                                        # (R, C)


@twin(rmsnorm_backward_numpy)
@njit(cache=True, nogil=True)
def rmsnorm_backward(dy, xhat, rstd, w, dx, dw):
    R, C = dy.shape
    acc = np.zeros(C, np.float64)                        # dw, summed over rows in float64
    for r in range(R):
        proj = 0.0
        for c in range(C):
            g = dy[r, c] * w[c]
            proj += np.float64(g) * xhat[r, c]
            acc[c] += np.float64(dy[r, c]) * xhat[r, c]
        p = np.float32(proj / C)
        s = rstd[r, 0]
        for c in range(C):
            dx[r, c] = (dy[r, c] * w[c] - xhat[r, c] * p) * s
    for c in range(C):
        dw[c] = acc[c]


# ----------------------------------------------------------------------------------------------
# RoPE, "rotate half" layout: x (B, H, T, D), cos/sin (T, D); x may be a transposed view
# ----------------------------------------------------------------------------------------------

def rope_forward_numpy(x, cos, sin, out):
    h = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., h:], x[..., :h]], axis=-1)                 # rotate_half(x)
    out[:] = x * cos + rotated * sin                                             # (B, H, T, D)


@twin(rope_forward_numpy)
@njit(cache=True, nogil=True)
def rope_forward(x, cos, sin, out):
    B, H, T, D = x.shape
    h = D // 2
    for b in range(B):
        for hh in range(H):
            for t in range(T):
                for i in range(h):
                    x1, x2 = x[b, hh, t, i], x[b, hh, t, i + h]
                    out[b, hh, t, i] = x1 * cos[t, i] - x2 * sin[t, i]
                    out[b, hh, t, i + h] = x2 * cos[t, i + h] + x1 * sin[t, i + h]


def rope_backward_numpy(dy, cos, sin, out):
    h = dy.shape[-1] // 2
    g = dy * sin
    out[:] = dy * cos + np.concatenate([g[..., h:], -g[..., :h]], axis=-1)       # rotate_half^T(dy sin)


@twin(rope_backward_numpy)
@njit(cache=True, nogil=True)
def rope_backward(dy, cos, sin, out):
    B, H, T, D = dy.shape
    h = D // 2
    for b in range(B):
        for hh in range(H):
            for t in range(T):
                for i in range(h):
                    d1, d2 = dy[b, hh, t, i], dy[b, hh, t, i + h]
                    out[b, hh, t, i] = d1 * cos[t, i] + d2 * sin[t, i + h]
                    out[b, hh, t, i + h] = d2 * cos[t, i + h] - d1 * sin[t, i]


# ----------------------------------------------------------------------------------------------
# Softmax backward over rows: probs, dprobs (R, S) -> dscores, written over dprobs
# ----------------------------------------------------------------------------------------------

def softmax_backward_numpy(dprobs, probs, inner):
    """dprobs <- probs * (dprobs - sum_s dprobs * probs); inner (R,) gets the row sums."""
    inner[:] = np.einsum("rs,rs->r", dprobs, probs)                              # (R,)
    dprobs -= inner[:, None]
    dprobs *= probs


@twin(softmax_backward_numpy)
@njit(cache=True, nogil=True)
def softmax_backward(dprobs, probs, inner):
    R, S = dprobs.shape
    for r in range(R):
        acc = np.float32(0.0)
        for s in range(S):
            acc += dprobs[r, s] * probs[r, s]
        inner[r] = acc
        for s in range(S):
            dprobs[r, s] = probs[r, s] * (dprobs[r, s] - acc)


# ----------------------------------------------------------------------------------------------
# Entry points: the compiled kernel for float32 on the numba backend, else the twin
# ----------------------------------------------------------------------------------------------

def compiled(*arrays) -> bool:
    """True when the kernels should run compiled: numba backend and every array float32."""
    return get_backend() == "numba" and all(a.dtype == np.float32 for a in arrays)
