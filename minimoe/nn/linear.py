"""The linear layer: y = x @ W.T + b, with W stored (out, in) as in PyTorch checkpoints.

Shape legend: (..., I) any leading shape, N rows (all leading axes), I input width, O output
width, E stacked matrices (experts).

`W` may be packed (a QTensor of a quantized model): `matmul` below is the readable reference,
which dequantizes and multiplies; on the numba backend the fused dequantize-and-multiply kernels of
minimoe/kernels/qmatmul.py compute the same product from the packed bytes (minimoe/kernels/
dispatch.py picks one). Backward needs a float W (quantized models are for inference).

A stack of matrices W (E, O, I) with `experts` (N,) multiplies row n by W[experts[n]]: the
experts of an MoE layer, all at once (minimoe/nn/moe.py).
"""
from __future__ import annotations

import numpy as np

from minimoe.kernels import takes_matmul, takes_matmul_many
from minimoe.kernels.dispatch import Leaf


def as_float(w, dtype) -> np.ndarray:
    """A weight as a float array: itself, or a packed QTensor dequantized."""
    return w if isinstance(w, np.ndarray) else w.dequantize().astype(dtype, copy=False)


def matmul(x: np.ndarray, w, b: np.ndarray | None = None, experts: np.ndarray | None = None) -> np.ndarray:
    """x (N, I) @ w (O, I).T (+ b (O,)) -> (N, O). With a stack w (E, O, I), b (E, O), row n
    uses matrix experts[n]."""
    if experts is None:
        y = x @ as_float(w, x.dtype).T                   # (N, I) @ (I, O) -> (N, O)
        return y if b is None else y + b                 # (N, O) + (O,)
    y = np.empty((x.shape[0], w.shape[-2]), x.dtype)     # (N, O)
    for e in np.unique(experts):                         # each matrix once, for its rows
        rows = np.flatnonzero(experts == e)              # (n_e,)
        y[rows] = x[rows] @ as_float(w[e], x.dtype).T    # (n_e, I) @ (I, O) -> (n_e, O)
        if b is not None:
            y[rows] += b[e]                              # (n_e, O) + (O,)
    return y


MATMUL = Leaf("matmul", matmul, "minimoe.kernels:matmul_leaf", when=takes_matmul)


def matmul_many(x: np.ndarray, ws, bs, experts: np.ndarray | None = None) -> list:
    """[x (N, I) @ w.T (+ b) for w, b in zip(ws, bs)]: several weights that read the same x, such
    as an attention layer's q, k and v, or an MoE layer's gate and up. Here one after the other; the
    compiled side may multiply them all in one kernel call (minimoe/kernels: matmul_many_leaf)."""
    return [matmul(x, w, b, experts) for w, b in zip(ws, bs)]


MATMUL_MANY = Leaf("matmuls", matmul_many, "minimoe.kernels:matmul_many_leaf", when=takes_matmul_many)


def forward_many(x: np.ndarray, ws, bs, experts: np.ndarray | None = None, names=()):
    """`forward` for several weights that read the same x (..., I): ws[i] (O_i, I) or a stack, bs[i]
    or None -> ([y_i (..., O_i)], [cache_i]); each cache_i is forward's, for `backward`.
    `names` labels each product in a trace ("attn.q", "attn.k", "attn.v")."""
    lead, I = x.shape[:-1], x.shape[-1]
    ys = MATMUL_MANY(x.reshape(-1, I), ws, bs, experts, name=tuple(names))   # [(N, O_i)]
    return ([y.reshape(*lead, y.shape[-1]) for y in ys],
            [(x, w, b is not None, experts) for w, b in zip(ws, bs)])


def forward(x: np.ndarray, w, b: np.ndarray | None = None, experts: np.ndarray | None = None,
            name: str = "linear"):
    """x (..., I), w (O, I) or (E, O, I) with experts (N,), b (O,) or (E, O) or None -> y (..., O).
    `name` labels it in a trace ("attn.q", "moe.experts.gate")."""
    if x.ndim == 2:                                      # (N, I) already
        return MATMUL(x, w, b, experts, name=name), (x, w, b is not None, experts)
    lead, I = x.shape[:-1], x.shape[-1]
    # one 2-D matmul over all rows: NumPy runs a stacked (B, T, I) @ (I, O) as B small ones
    y = MATMUL(x.reshape(-1, I), w, b, experts, name=name)   # (N, I) @ (I, O) -> (N, O)
    return y.reshape(*lead, y.shape[-1]), (x, w, b is not None, experts)


def backward(dy: np.ndarray, cache):
    """dy (..., O) -> (dx (..., I), dw (O, I) or (E, O, I), db (O,) or (E, O) or None)."""
    x, w, has_bias, experts = cache
    O, I = w.shape[-2], w.shape[-1]
    dy2, x2 = dy.reshape(-1, O), x.reshape(-1, I)        # (N, O), (N, I): all leading axes as rows
    if experts is None:
        dx = dy2 @ w                                     # (N, O) @ (O, I) -> (N, I)
        dw = dy2.T @ x2                                  # (O, N) @ (N, I) -> (O, I)
        db = dy2.sum(axis=0) if has_bias else None       # (O,)
        return dx.reshape(x.shape), dw, db
    dx = np.empty_like(x2)                               # (N, I)
    dw = np.zeros(w.shape, dy.dtype)                     # (E, O, I): experts with no rows get 0
    db = np.zeros(w.shape[:-1], dy.dtype) if has_bias else None   # (E, O)
    for e in np.unique(experts):
        rows = np.flatnonzero(experts == e)
        dx[rows] = dy2[rows] @ w[e]                      # (n_e, O) @ (O, I) -> (n_e, I)
        dw[e] = dy2[rows].T @ x2[rows]                   # (O, n_e) @ (n_e, I) -> (O, I)
        if has_bias:
            db[e] = dy2[rows].sum(axis=0)                # (O,)
    return dx.reshape(x.shape), dw, db
