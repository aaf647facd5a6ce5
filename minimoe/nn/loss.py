"""Cross-entropy of next-token prediction: the mean over positions of -log softmax(logits)[target].

Shape legend: N positions (B*T), V vocab.
"""
from __future__ import annotations

import numpy as np


def forward(logits: np.ndarray, targets: np.ndarray):
    """logits (..., V), targets (...) int -> (mean loss (scalar), cache)."""
    V = logits.shape[-1]
    z = logits.reshape(-1, V)                            # (N, V)
    t = targets.reshape(-1)                              # (N,)
    m = z.max(axis=-1, keepdims=True)                    # (N, 1)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=-1))   # (N,) logsumexp
    loss = float(np.mean(lse - z[np.arange(len(t)), t]))
    return loss, (z, t, lse, logits.shape)


def backward(dloss: float, cache):
    """-> dlogits (..., V) = dloss * (softmax(logits) - onehot(target)) / N."""
    z, t, lse, shape = cache
    N = len(t)
    dz = np.exp(z - lse[:, None])                        # (N, V) softmax
    dz[np.arange(N), t] -= 1.0
    return (dz * (dloss / N)).reshape(shape).astype(z.dtype, copy=False)
