"""Exercise: one decode step with a KV cache.   Grade: minimoe grade kv_cache_decode.py

Shape legend: B batch, H heads, S positions already cached, D head dim.

Generating one token at a time, the new token's query attends to every key so far, its own
included. Instead of recomputing the keys and values of the whole sequence, keep them:
    append the new k, v (B, H, 1, D) to the caches (B, H, S, D) -> (B, H, S+1, D)
    y = softmax(q k_cache^T / sqrt(D)) v_cache        (B, H, 1, D); no mask is needed: the
                                                      newest query may see every cached key

Return (y, k_cache, v_cache), the caches grown by one position. The grader starts from empty
caches (S = 0), decodes a whole sequence one token at a time and compares every step with
attention over the whole sequence at once (minimoe.nn.attention.attend, causal).
"""
import numpy as np

EXERCISE = "kv_cache_decode"


def kv_cache_decode(q: np.ndarray, k: np.ndarray, v: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray):
    """q, k, v (B, H, 1, D), k_cache, v_cache (B, H, S, D) -> (y (B, H, 1, D), k_cache, v_cache)."""
    raise NotImplementedError("write one decode step with a KV cache")
