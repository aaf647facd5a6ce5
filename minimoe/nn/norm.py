"""RMSNorm (Zhang & Sennrich, 2019): scale each vector by the reciprocal of its root mean square.

    y = x / sqrt(mean(x^2) + eps) * weight

Shape legend: (..., C) any leading shape, R rows (all leading axes), C the normalised width.

`rmsnorm` and `rmsnorm_backward` below are the reference. For float32 on the numba backend the
same arithmetic runs as one compiled loop per row (minimoe/kernels/train.py), which matters for the
short rows of a small model; MINIMOE_BACKEND=numpy runs this file's NumPy everywhere.
"""
from __future__ import annotations

import numpy as np

from minimoe.kernels.dispatch import Leaf


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float):
    """x (..., C), weight (C,) -> (y (..., C), xhat (..., C), rstd (..., 1))."""
    C = x.shape[-1]
    # mean(x^2) as a dot product per row: einsum reads x once and allocates no (..., C) temporary
    ms = np.einsum("...c,...c->...", x, x)[..., None] / C  # (..., 1) mean square
    rstd = 1.0 / np.sqrt(ms + eps)                       # (..., 1) reciprocal RMS
    xhat = x * rstd                                      # (..., C) unit-RMS vectors
    return xhat * weight, xhat, rstd                     # y (..., C)


def rmsnorm_backward(dy: np.ndarray, xhat: np.ndarray, rstd: np.ndarray, weight: np.ndarray):
    """dy (..., C) -> (dx (..., C), dweight (C,))."""
    C = xhat.shape[-1]
    dweight = np.einsum("nc,nc->c", dy.reshape(-1, C), xhat.reshape(-1, C))  # (C,) sum of dy*xhat over rows
    dxhat = dy * weight                                  # (..., C)
    # in the forward pass xhat = x * rstd, and rstd depends on x through mean(x^2):
    # dx = rstd * (dxhat - xhat * mean(dxhat * xhat))
    proj = np.einsum("...c,...c->...", dxhat, xhat)[..., None] / C  # (..., 1) mean(dxhat * xhat)
    dx = dxhat - xhat * proj                             # (..., C)
    dx *= rstd
    return dx, dweight


RMSNORM = Leaf("norm", rmsnorm, "minimoe.kernels.train:rmsnorm")
RMSNORM_BACKWARD = Leaf(None, rmsnorm_backward, "minimoe.kernels.train:rmsnorm_backward")


def forward(x: np.ndarray, weight: np.ndarray, eps: float, name: str = "norm"):
    """x (..., C), weight (C,) -> y (..., C). `name` labels it in a trace."""
    y, xhat, rstd = RMSNORM(x, weight, eps, name=name)
    return y, (xhat, rstd, weight)


def backward(dy: np.ndarray, cache):
    """dy (..., C) -> (dx (..., C), dweight (C,))."""
    xhat, rstd, weight = cache
    return RMSNORM_BACKWARD(dy, xhat, rstd, weight)
