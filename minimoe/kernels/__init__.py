"""The hot loops: matmul over float or packed 8/4-bit weights, MoE dispatch/combine, decode ops.

Shape legend: N rows of activations, I input width, O output width, E experts.

`matmul(x, w)` is the one matmul the model calls. `w` is an (O, I) float array, or a packed
`minimoe.quant.QTensor` of logical shape (O, I). For a float weight it is BLAS (`x @ w.T`). For a
packed q4_0 / q4_1 / q8_0 / mxfp4 weight it runs the fused dequantize-and-multiply kernels of
qmatmul.py, on a copy of the bytes repacked once for them (packed.py). Any other format (nf4), or
activations that are not float32, take the plainest reference path: dequantize, then multiply.

Every kernel is a Numba function beside a NumPy twin with the same signature (backend.py):

    minimoe.set_backend("numpy")          # or MINIMOE_BACKEND=numpy, or `with minimoe.backend("numpy"):`

runs the twins everywhere, so a debugger can step into any line. See docs/kernels.md.

Files:
    backend.py   the switch, and `Kernel` (a Numba function paired with its twin)
    packed.py    the kernels' layout of a QTensor (float32 scales, value bytes block-index-last)
    qmatmul.py   fused GEMV (decode) and tile-dequantize + BLAS (prefill), per format
    moe.py       MoE dispatch (group assignments by expert), gather, combine (weighted scatter-add)
    ops.py       RMSNorm, rotary + attention over the KV cache for one new token, router top-k, SwiGLU
    decode.py    a fused one-token forward pass that strings the kernels together
"""
from __future__ import annotations

import numpy as np

from minimoe.kernels.backend import backend, get_backend, set_backend
from minimoe.kernels.packed import PACKED_FORMATS, KernelInputError, PackedWeight, pack


def matmul(x: np.ndarray, w) -> np.ndarray:
    """x @ w.T: (..., I) @ (O, I).T -> (..., O). `w` may be a float array, a QTensor or a PackedWeight.
    Shapes and dtypes are checked here (KernelInputError), so no input reaches a kernel unchecked."""
    if isinstance(w, np.ndarray):
        _check_operands(x, w.shape, w.ndim == 2 and w.dtype.kind in "fiub")
        return x @ w.T                                   # (..., I) @ (I, O) -> (..., O), BLAS
    from minimoe.kernels.qmatmul import qmatmul
    if isinstance(w, PackedWeight):
        return qmatmul(x, w)                             # validates w, then x
    fmt = getattr(w, "fmt", None)
    if fmt is None:
        raise KernelInputError(f"matmul: w must be a float array or a QTensor, found {type(w).__name__}")
    if getattr(x, "dtype", None) == np.float32 and fmt in PACKED_FORMATS:
        return qmatmul(x, pack(w))                       # fused dequantize-and-multiply
    _check_operands(x, w.shape, len(w.shape) == 2)
    if x.dtype.kind != "f":                              # weights cast to ints would be wrong
        raise KernelInputError(f"matmul: x must be a float array to multiply a packed weight, found "
                               f"{x.dtype}; use x.astype(np.float32)")
    return x @ w.dequantize().astype(x.dtype, copy=False).T  # reference: dequantize, then multiply


def _check_operands(x, w_shape: tuple, w_ok: bool) -> None:
    if not w_ok:
        raise KernelInputError(f"matmul: w must be a 2-D (O, I) array of numbers, found shape {tuple(w_shape)}")
    if not isinstance(x, np.ndarray) or x.ndim < 1 or x.shape[-1] != w_shape[-1] or x.dtype.kind not in "fiub":
        raise KernelInputError(f"matmul: x must be an array (..., {w_shape[-1]}) of numbers to multiply a "
                               f"weight of shape {tuple(w_shape)}, found "
                               + (f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__))


__all__ = ["matmul", "backend", "get_backend", "set_backend", "pack", "PackedWeight",
           "KernelInputError", "PACKED_FORMATS"]
