"""Token embedding: look up one row of a table per token.

Shape legend: B batch, T time, C d_model, V vocab.
"""
from __future__ import annotations

import numpy as np

from minimoe.kernels.dispatch import Leaf


def lookup(tokens: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """tokens (B, T) int, weight (V, C) -> x (B, T, C): row tokens[b, t] of the table. A table
    stored as bf16 (a QTensor, memory-mapped) decodes only the rows looked up."""
    if not isinstance(weight, np.ndarray):
        return weight.rows(tokens)                       # (V, C) packed -> (B, T, C) float32
    return weight[tokens]                                # (V, C)[(B, T)] -> (B, T, C)


LOOKUP = Leaf("embedding", lookup)                       # NumPy only; a leaf so that the trace counts it


def forward(tokens: np.ndarray, weight: np.ndarray):
    """tokens (B, T) int, weight (V, C) -> x (B, T, C)."""
    x = LOOKUP(tokens, weight, name="embed")             # (B, T, C)
    return x, (tokens, weight.shape)


def backward(dx: np.ndarray, cache):
    """dx (B, T, C) -> dweight (V, C): each row gathers the gradients of the tokens that used it."""
    tokens, shape = cache
    dweight = np.zeros(shape, dtype=dx.dtype)            # (V, C)
    # the reference is one line, a scatter-add of the (B*T, C) rows:
    #     np.add.at(dweight, tokens.ravel(), dx.reshape(-1, C))
    # but np.add.at is slow; sorting the rows by token and summing each run is the same sum
    flat = tokens.ravel()                                # (N,) N = B*T
    order = np.argsort(flat, kind="stable")              # (N,) rows grouped by token
    ids, starts = np.unique(flat[order], return_index=True)  # the tokens used, where each run starts
    dweight[ids] = np.add.reduceat(dx.reshape(-1, shape[1])[order], starts, axis=0)  # (n_ids, C)
    return dweight
