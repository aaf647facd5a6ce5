"""The linear layer: y = x @ W.T + b, with W stored (out, in) as in PyTorch checkpoints.

Shape legend: (..., I) any leading shape, I input width, O output width.

`W` may be a packed QTensor (a quantized model); `minimoe.kernels.matmul` handles both.
Backward needs a float W (quantized models are for inference).
"""
from __future__ import annotations

import numpy as np

from minimoe.inspect import tracing
from minimoe.kernels import matmul


def forward(x: np.ndarray, w, b: np.ndarray | None = None, name: str = "linear"):
    """x (..., I), w (O, I), b (O,) or None -> y (..., O). `name` labels it in a trace."""
    tr = tracing.ACTIVE                                  # None unless inside `with minimoe.trace()`
    t0 = tr.clock() if tr else 0.0
    lead, I = x.shape[:-1], x.shape[-1]
    # one 2-D matmul over all rows: NumPy runs a stacked (B, T, I) @ (I, O) as B small ones
    y = matmul(x.reshape(-1, I), w)                      # (N, I) @ (I, O) -> (N, O), N = prod(...)
    y = y.reshape(*lead, y.shape[-1])                    # (..., O)
    if b is not None:
        y = y + b                                        # (..., O) + (O,)
    if tr:
        tr.matmul(name, x, w, b, y, t0)                  # FLOPs, weight bytes at stored precision
    return y, (x, w, b is not None)


def backward(dy: np.ndarray, cache):
    """dy (..., O) -> (dx (..., I), dw (O, I), db (O,) or None)."""
    x, w, has_bias = cache
    O, I = w.shape
    dy2 = dy.reshape(-1, O)                              # (N, O), all leading axes as rows
    dx = (dy2 @ w).reshape(x.shape)                      # (N, O) @ (O, I) -> (N, I) -> (..., I)
    dw = dy2.T @ x.reshape(-1, I)                        # (O, N) @ (N, I) -> (O, I)
    db = dy2.sum(axis=0) if has_bias else None           # (O,)
    return dx, dw, db
