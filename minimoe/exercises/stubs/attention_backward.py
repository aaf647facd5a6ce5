"""Exercise: the backward pass of causal softmax attention.   Grade: minimoe grade attention_backward.py

Shape legend: B batch, H heads, T queries, S keys (S == T here), D head dim.

In the forward pass (minimoe/nn/attention.py, one kv head per head):
    scores = q k^T / sqrt(D)                         (B, H, T, S)
    scores[t, s] = -inf where s > t                  (causal mask)
    probs  = softmax(scores) over s                  (B, H, T, S); 0 where masked
    y      = probs v                                 (B, H, T, D)

Given dy = dL/dy and the forward's probs, return (dq, dk, dv). Hints: do it in the forward's
order reversed; the softmax backward of one row is probs * (dprobs - sum(dprobs * probs)); the
masked entries have probs 0 and need no special case. Graded by float64 finite differences.
"""
import numpy as np

EXERCISE = "attention_backward"


def attention_backward(dy: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, probs: np.ndarray):
    """dy, q, k, v (B, H, T, D), probs (B, H, T, S) -> (dq, dk, dv), each (B, H, T, D)."""
    raise NotImplementedError("write the attention backward pass")
