"""Exercise: the backward pass of the SwiGLU activation.   Grade: minimoe grade swiglu_backward.py

Shape legend: (..., F) any leading axes, F ffn width.

In the forward pass (minimoe/nn/ffn.py), a is the gate projection and u the up projection:
    s    = sigmoid(a)
    silu = a * s
    h    = silu * u                                  (..., F)

Given dh = dL/dh, return (da, du). Hint: d sigmoid(a)/da = s (1 - s). Graded by float64 finite
differences.
"""
import numpy as np

EXERCISE = "swiglu_backward"


def swiglu_backward(dh: np.ndarray, a: np.ndarray, u: np.ndarray):
    """dh, a, u (..., F) -> (da (..., F), du (..., F))."""
    raise NotImplementedError("write the SwiGLU backward pass")
