"""Exercise: the backward pass of RMSNorm.   Grade: minimoe grade rmsnorm_backward.py

Shape legend: C channels; (...) any leading axes.

In the forward pass (minimoe/nn/norm.py):
    rstd = 1 / sqrt(mean(x^2 over C) + eps)         (..., 1)
    xhat = x * rstd                                  (..., C)
    y    = xhat * weight                             (..., C)

Write the backward pass: given dy = dL/dy, return dL/dx and dL/dweight. Hints: dweight sums over
every leading axis; x reaches y through xhat twice, directly and through rstd. The grader checks
both against float64 finite differences of the forward pass.
"""
import numpy as np

EXERCISE = "rmsnorm_backward"


def rmsnorm_backward(dy: np.ndarray, xhat: np.ndarray, rstd: np.ndarray, weight: np.ndarray):
    """dy (..., C), xhat (..., C), rstd (..., 1), weight (C,) -> (dx (..., C), dweight (C,))."""
    raise NotImplementedError("write the RMSNorm backward pass")
