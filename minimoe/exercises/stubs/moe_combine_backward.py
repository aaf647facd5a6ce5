"""Exercise: the backward pass of the MoE combine.   Grade: minimoe grade moe_combine_backward.py

Shape legend: N tokens, K top-k, A = N*K assignments, C channels.

Assignment a = n*K + k is token n's k-th expert. The experts ran on the assignments sorted by
expert: `order` (A,) lists the assignment ids in that sorted order, and ys (A, C) holds the
expert outputs in the same sorted order. The combine (minimoe/nn/moe.py) is
    y_assign[order] = ys                             (A, C) back in (token, slot) order
    y[n] = sum_k weights[n, k] * y_assign[n*K + k]   (N, C)

Given dy = dL/dy (N, C), return (dweights (N, K), dys (A, C) in the sorted order of ys). Graded
by float64 finite differences.
"""
import numpy as np

EXERCISE = "moe_combine_backward"


def moe_combine_backward(dy: np.ndarray, ys: np.ndarray, order: np.ndarray, weights: np.ndarray):
    """dy (N, C), ys (A, C), order (A,) int, weights (N, K) -> (dweights (N, K), dys (A, C))."""
    raise NotImplementedError("write the combine backward pass")
