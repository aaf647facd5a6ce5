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
    ms = np.mean(x * x, axis=-1, keepdims=True)          # (..., 1) mean square
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
    dweight = np.sum((dy * xhat).reshape(-1, C), axis=0)  # (C,) sum over every position
    dxhat = dy * weight                                   # (..., C)
    # in the forward pass xhat = x * rstd, and rstd depends on x through mean(x^2):
    # dx = rstd * (dxhat - xhat * mean(dxhat * xhat))
    dx = rstd * (dxhat - xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True))
    return dx, dweight
