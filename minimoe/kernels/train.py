"""Row-wise fused passes: RMSNorm, RoPE and the softmax backward, forward and backward.

Shape legend: R rows (tokens), C width, B batch, H heads, T positions, D head dim, S keys.

A small model spends as long in elementwise NumPy as in its matrix products: many short passes
over rows only C = 128 or D = 32 wide, where NumPy's per-call cost dominates, and a decode step is
nothing but such rows. Each becomes one compiled loop here:

    rmsnorm            xhat = x * rstd, rstd = 1 / sqrt(mean(x^2) + eps), y = xhat * w
    rmsnorm_backward   dw = sum_rows dy * xhat,  dx = rstd * (dy w - xhat * mean(dy w * xhat))
    rope               y = x * cos + rotate_half(x) * sin         (x: (B, H, T, D), any strides)
    rope_backward      dx = dy * cos + rotate_half^T(dy * sin)
    softmax_backward   dS = P * (dP - sum_s dP * P), written over dP

The NumPy twin of each is the function of the same name in minimoe/nn/ (norm.py, rope.py,
attention.py), with the same signature: it runs for float64 (the gradient checks), for
MINIMOE_BACKEND=numpy, and wherever minimoe/kernels/dispatch.py does not pick the kernel.
tests/test_kernels_train.py checks the two agree on odd shapes. Not compiled: anything with exp
or tanh in the forward pass (softmax, SwiGLU): Numba calls the scalar libm for those, while NumPy
runs them on SIMD units.

Every kernel releases the GIL (nogil=True), so the trainer's shard threads run them at once.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from minimoe.kernels.backend import configure_numba
from minimoe.kernels.packed import KernelInputError

configure_numba()


# ----------------------------------------------------------------------------------------------
# RMSNorm over rows: x (R, C), w (C,)
# ----------------------------------------------------------------------------------------------

@njit(inline="always")
def row_rstd(x, r, eps):
    """1 / sqrt(mean(x[r]^2) + eps) of row r of x (R, C), summed in float64, as float32."""
    C = x.shape[1]
    ms = 0.0                                             # float64 accumulator
    for c in range(C):
        ms += np.float64(x[r, c]) * x[r, c]
    return np.float32(1.0 / math.sqrt(ms / C + eps))


@njit(cache=True, nogil=True)
def rmsnorm_rows(x, w, eps, y, xhat, rstd):
    R, C = x.shape
    for r in range(R):
        s = row_rstd(x, r, eps)
        rstd[r, 0] = s
        for c in range(C):
            xh = x[r, c] * s
            xhat[r, c] = xh
            y[r, c] = xh * w[c]


@njit(cache=True, nogil=True)
def rmsnorm_backward_rows(dy, xhat, rstd, w, dx, dw):
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


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float):
    """x (..., C), weight (C,) -> (y (..., C), xhat (..., C), rstd (..., 1)); see nn/norm.py."""
    C = x.shape[-1]
    if weight.shape != (C,):
        raise KernelInputError(f"rmsnorm: weight must have shape ({C},) to match x {x.shape}, found {weight.shape}")
    x2 = np.ascontiguousarray(x.reshape(-1, C))          # (R, C)
    y, xhat = np.empty_like(x2), np.empty_like(x2)
    rstd = np.empty((x2.shape[0], 1), x2.dtype)          # (R, 1)
    rmsnorm_rows(x2, weight, float(eps), y, xhat, rstd)
    return y.reshape(x.shape), xhat.reshape(x.shape), rstd.reshape(*x.shape[:-1], 1)


def rmsnorm_backward(dy: np.ndarray, xhat: np.ndarray, rstd: np.ndarray, weight: np.ndarray):
    """dy (..., C) -> (dx (..., C), dweight (C,)); see nn/norm.py."""
    C = xhat.shape[-1]
    dy2 = np.ascontiguousarray(dy.reshape(-1, C))        # (R, C)
    dx, dweight = np.empty_like(dy2), np.empty(C, dy2.dtype)
    rmsnorm_backward_rows(dy2, np.ascontiguousarray(xhat.reshape(-1, C)), rstd.reshape(-1, 1), weight,
                          dx, dweight)
    return dx.reshape(dy.shape), dweight


# ----------------------------------------------------------------------------------------------
# RoPE, "rotate half" layout: x (B, H, T, D), cos/sin (T, D); x may be a transposed view
# ----------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def rope_rows(x, cos, sin, out):
    B, H, T, D = x.shape
    h = D // 2
    for b in range(B):
        for hh in range(H):
            for t in range(T):
                for i in range(h):
                    x1, x2 = x[b, hh, t, i], x[b, hh, t, i + h]
                    out[b, hh, t, i] = x1 * cos[t, i] - x2 * sin[t, i]
                    out[b, hh, t, i + h] = x2 * cos[t, i + h] + x1 * sin[t, i + h]


@njit(cache=True, nogil=True)
def rope_backward_rows(dy, cos, sin, out):
    B, H, T, D = dy.shape
    h = D // 2
    for b in range(B):
        for hh in range(H):
            for t in range(T):
                for i in range(h):
                    d1, d2 = dy[b, hh, t, i], dy[b, hh, t, i + h]
                    out[b, hh, t, i] = d1 * cos[t, i] + d2 * sin[t, i + h]
                    out[b, hh, t, i + h] = d2 * cos[t, i + h] - d1 * sin[t, i]


def _check_rope(x, cos, sin, what):
    T, D = x.shape[-2:]
    if cos.shape != (T, D) or sin.shape != (T, D) or D % 2:
        raise KernelInputError(f"{what}: cos/sin must be (T={T}, D={D}) with D even, found {cos.shape} and {sin.shape}")


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x (B, H, T, D), cos/sin (T, D) -> rotated (B, H, T, D); see nn/rope.py's rotate."""
    _check_rope(x, cos, sin, "rope")
    out = np.empty(x.shape, x.dtype)
    rope_rows(x, cos, sin, out)
    return out


def rope_backward(dy: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """dy (B, H, T, D) -> dx (B, H, T, D); see nn/rope.py's rotate_back."""
    _check_rope(dy, cos, sin, "rope_backward")
    out = np.empty(dy.shape, dy.dtype)
    rope_backward_rows(dy, cos, sin, out)
    return out


# ----------------------------------------------------------------------------------------------
# Softmax backward over rows: probs, dprobs (R, S) -> dscores, written over dprobs
# ----------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def softmax_backward_rows(dprobs, probs, inner):
    R, S = dprobs.shape
    for r in range(R):
        acc = np.float32(0.0)
        for s in range(S):
            acc += dprobs[r, s] * probs[r, s]
        inner[r] = acc
        for s in range(S):
            dprobs[r, s] = probs[r, s] * (dprobs[r, s] - acc)


def softmax_backward(dprobs: np.ndarray, probs: np.ndarray):
    """dprobs, probs (N, S) -> (dscores (N, S) written over dprobs, inner (N,)); see nn/attention.py."""
    if dprobs.shape != probs.shape or dprobs.ndim != 2:
        raise KernelInputError(f"softmax_backward: need two (N, S) arrays, found {dprobs.shape} and {probs.shape}")
    d = dprobs if dprobs.flags.c_contiguous else np.ascontiguousarray(dprobs)
    inner = np.empty(d.shape[0], d.dtype)
    softmax_backward_rows(d, np.ascontiguousarray(probs), inner)
    return d, inner
