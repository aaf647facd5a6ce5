"""RMSNorm (Zhang & Sennrich, 2019): scale each vector by the reciprocal of its root mean square.

    y = x / sqrt(mean(x^2) + eps) * weight

Shape legend: (..., C) any leading shape, R rows (all leading axes), C the normalised width.

The NumPy below is the reference. For float32 on the numba backend the same arithmetic runs as
one compiled loop per row (minimoe/kernels/train.py), which matters for the short rows of a
small model; MINIMOE_BACKEND=numpy runs this file's NumPy everywhere.
"""
from __future__ import annotations

import numpy as np

from minimoe.inspect import tracing
from minimoe.kernels import train as kernels


def forward(x: np.ndarray, weight: np.ndarray, eps: float, name: str = "norm"):
    """x (..., C), weight (C,) -> y (..., C). `name` labels it in a trace."""
    tr = tracing.ACTIVE                                  # None unless inside `with minimoe.trace()`
    t0 = tr.clock() if tr else 0.0
    C = x.shape[-1]
    if kernels.compiled(x, weight):                      # fused: one pass per row
        x2 = np.ascontiguousarray(x.reshape(-1, C))      # (R, C)
        y, xhat = np.empty_like(x2), np.empty_like(x2)
        rstd = np.empty((x2.shape[0], 1), x2.dtype)      # (R, 1)
        kernels.rmsnorm_forward.numba(x2, weight, float(eps), y, xhat, rstd)
        y, xhat, rstd = y.reshape(x.shape), xhat.reshape(x.shape), rstd.reshape(*x.shape[:-1], 1)
        if tr:
            tr.norm(name, x, weight, y, t0)
        return y, (xhat, rstd, weight)
    # mean(x^2) as a dot product per row: einsum reads x once and allocates no (..., C) temporary
    ms = np.einsum("...c,...c->...", x, x)[..., None] / C  # (..., 1) mean square
    rstd = 1.0 / np.sqrt(ms + eps)                       # (..., 1) reciprocal RMS
    xhat = x * rstd                                      # (..., C) unit-RMS vectors
    y = xhat * weight                                    # (..., C)
    if tr:
        tr.norm(name, x, weight, y, t0)
    cache = (xhat, rstd, weight)
    return y, cache


def backward(dy: np.ndarray, cache):
    """dy (..., C) -> (dx (..., C), dweight (C,))."""
    xhat, rstd, weight = cache
    C = xhat.shape[-1]
    if kernels.compiled(dy, xhat, weight):               # fused: one pass per row
        dy2 = np.ascontiguousarray(dy.reshape(-1, C))    # (R, C)
        dx, dweight = np.empty_like(dy2), np.empty(C, dy2.dtype)
        kernels.rmsnorm_backward.numba(dy2, np.ascontiguousarray(xhat.reshape(-1, C)),
                                       rstd.reshape(-1, 1), weight, dx, dweight)
        return dx.reshape(dy.shape), dweight
    dweight = np.einsum("nc,nc->c", dy.reshape(-1, C), xhat.reshape(-1, C))  # (C,) sum of dy*xhat over rows
    dxhat = dy * weight                                   # (..., C)
    # in the forward pass xhat = x * rstd, and rstd depends on x through mean(x^2):
    # dx = rstd * (dxhat - xhat * mean(dxhat * xhat))
    proj = np.einsum("...c,...c->...", dxhat, xhat)[..., None] / C  # (..., 1) mean(dxhat * xhat)
    dx = dxhat - xhat * proj                              # (..., C)
    dx *= rstd
    return dx, dweight
