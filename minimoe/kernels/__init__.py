"""The hot loops: matmul over float or packed 4/8-bit weights.

Shape legend: N rows of activations, I input width, O output width.

`matmul(x, w)` is the one matmul the model calls. `w` is an (O, I) float array, or a packed
`minimoe.quant.QTensor` of logical shape (O, I). The reference path for a packed weight is the
plainest possible: dequantize to float32, then multiply.
"""
from __future__ import annotations

import numpy as np


def matmul(x: np.ndarray, w) -> np.ndarray:
    """x @ w.T: (..., I) @ (O, I).T -> (..., O). `w` may be a float array or a QTensor."""
    if isinstance(w, np.ndarray):
        return x @ w.T                                   # (..., I) @ (I, O) -> (..., O)
    return x @ w.dequantize().astype(x.dtype, copy=False).T  # packed: dequantize, then multiply
