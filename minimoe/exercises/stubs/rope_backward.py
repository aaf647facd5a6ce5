"""Exercise: the backward pass of rotary position embeddings (RoPE).   Grade: minimoe grade rope_backward.py

Shape legend: T time, D head dim (even); (...) leading axes such as (B, H).

In the forward pass (minimoe/nn/rope.py), with x = [x1, x2] split into halves of D/2:
    rotate_half(x) = [-x2, x1]
    y = x * cos + rotate_half(x) * sin               cos, sin (T, D)

Each pair (x1[i], x2[i]) is rotated by an angle. Write dL/dx given dy = dL/dy. Hint: the
rotation is orthogonal, so the backward pass rotates by the opposite angle. Graded by float64
finite differences.
"""
import numpy as np

EXERCISE = "rope_backward"


def rope_backward(dy: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """dy (..., T, D), cos (T, D), sin (T, D) -> dx (..., T, D)."""
    raise NotImplementedError("write the RoPE backward pass")
