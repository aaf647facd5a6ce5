"""RMSNorm (Zhang & Sennrich, 2019): scale each vector by the reciprocal of its root mean square.

    y = x / sqrt(mean(x^2) + eps) * weight

Shape legend: (..., C) any leading shape, C the normalised width.
"""
from __future__ import annotations

import numpy as np

from minimoe.inspect import tracing


def forward(x: np.ndarray, weight: np.ndarray, eps: float, name: str = "norm"):
    """x (..., C), weight (C,) -> y (..., C). `name` labels it in a trace."""
    tr = tracing.ACTIVE                                  # None unless inside `with minimoe.trace()`
    t0 = tr.clock() if tr else 0.0
    C = x.shape[-1]
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
    dweight = np.einsum("nc,nc->c", dy.reshape(-1, C), xhat.reshape(-1, C))  # (C,) sum of dy*xhat over rows
    dxhat = dy * weight                                   # (..., C)
    # in the forward pass xhat = x * rstd, and rstd depends on x through mean(x^2):
    # dx = rstd * (dxhat - xhat * mean(dxhat * xhat))
    proj = np.einsum("...c,...c->...", dxhat, xhat)[..., None] / C  # (..., 1) mean(dxhat * xhat)
    dx = dxhat - xhat * proj                              # (..., C)
    dx *= rstd
    return dx, dweight
