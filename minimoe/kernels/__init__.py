"""The hot loops: matmul over float or packed 8/4-bit weights, MoE dispatch/combine, attention,
RMSNorm, RoPE and the router's top-k, each a Numba kernel beside its NumPy twin.

Shape legend: N rows of activations, I input width, O output width, E experts.

`matmul(x, w)` multiplies by a weight in any form: `w` is an (O, I) float array, or a packed
`minimoe.quant.QTensor` of logical shape (O, I). For a float weight it is BLAS (`x @ w.T`). For a
packed q4_0 / q4_1 / q8_0 / mxfp4 weight it runs the fused dequantize-and-multiply kernels of
qmatmul.py, on a copy of the bytes repacked once for them (packed.py). Any other format (nf4), or
activations that are not float32, take the plainest reference path: dequantize, then multiply.

The model reaches every kernel through one place, dispatch.py: each hot operation is a `Leaf`
pairing the readable NumPy function in minimoe/nn/ with the compiled kernel here, and the trace
records there. The backend switch (backend.py):

    minimoe.set_backend("numpy")          # or MINIMOE_BACKEND=numpy, or `with minimoe.backend("numpy"):`

runs the NumPy twins everywhere, so a debugger can step into any line. See docs/kernels.md.

Files (the Numba modules are imported on a kernel's first use, not by `import minimoe`):
    backend.py   the switch, `Kernel` (a Numba function paired with its twin), Numba's settings
    dispatch.py  `Leaf`: the one place that picks a kernel or its twin, and that traces
    packed.py    the kernels' layout of a QTensor (float32 scales, value bytes block-index-last)
    qmatmul.py   fused GEMV (decode) and tile-dequantize + BLAS (prefill), per format
    kquant_matmul.py  the same for the K-quants q4_k and q6_k, on the GGUF bytes as stored
    halfmatmul.py  bf16 / fp16 weights as stored (a memory-mapped checkpoint's QTensors): GEMV
                 kernels and tile-widen + BLAS
    stored_gemv.py q4_0 / q8_0 / mxfp4 weights of a memory-mapped checkpoint, read from their GGUF
                 blocks as the file holds them (the repacked copy would read every expert)
    moe.py       MoE dispatch (group assignments by expert), gather, combine (weighted scatter-add)
    ops.py       attention over the KV cache for a few new positions, router top-k
    train.py     row-wise RMSNorm, RoPE and softmax backward, forward and backward
"""
from __future__ import annotations

import numpy as np

from minimoe.kernels.backend import backend, get_backend, set_backend
from minimoe.io.pages import is_mapped
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
    if fmt in HALF_FORMATS and getattr(x, "dtype", None) == np.float32:
        from minimoe.kernels.halfmatmul import matmul_half
        return matmul_half(x, w)                         # bf16 / fp16 as stored, widened on the fly
    if getattr(x, "dtype", None) == np.float32 and fmt in PACKED_FORMATS:
        return qmatmul(x, pack(w))                       # fused dequantize-and-multiply
    if fmt in KQUANT_GEMV_FORMATS and getattr(x, "dtype", None) == np.float32 and x.ndim == 2:
        from minimoe.kernels.kquant_matmul import kmatmul
        return kmatmul(x, w)                             # fused, on the GGUF bytes as they are
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


def matmul_leaf(x: np.ndarray, w, b=None, experts=None) -> np.ndarray:
    """The compiled side of minimoe/nn/linear.py's `matmul`, with its signature: x (N, I) float32
    @ w (O, I).T (+ b), or row n times w[experts[n]] of a stack (E, O, I) (+ b[experts[n]])."""
    from minimoe.kernels.qmatmul import fmatmul, qmatmul
    if getattr(w, "fmt", None) in HALF_FORMATS:
        from minimoe.kernels.halfmatmul import matmul_half
        y = matmul_half(x, w, experts)                                    # (N, O)
        return y if b is None else y + (b if experts is None else b[experts])
    if getattr(w, "fmt", None) in STORED_FORMATS and w.nbytes >= STORED_MIN_BYTES and is_mapped(w.blocks):
        from minimoe.kernels.stored_gemv import matmul_stored
        y = matmul_stored(x, w, experts)                                  # (N, O)
        return y if b is None else y + (b if experts is None else b[experts])
    if getattr(w, "fmt", None) in KQUANT_GEMV_FORMATS:
        from minimoe.kernels.kquant_matmul import kmatmul
        y = kmatmul(x, w, experts)                                        # (N, O)
        return y if b is None else y + (b if experts is None else b[experts])
    if experts is None:
        y = x @ w.T if isinstance(w, np.ndarray) else qmatmul(x, pack(w))  # (N, O)
        return y if b is None else y + b
    if not isinstance(w, np.ndarray):
        y = qmatmul(x, pack(w), experts)                                  # (N, O)
    elif x.shape[0] <= GEMV_ROWS:
        y = fmatmul(x, w, experts)                                        # (N, O), row by row
    else:                                                  # BLAS, one matrix at a time: the twin's
        from minimoe.nn.linear import matmul as by_expert                  # own loop
        return by_expert(x, w, b, experts)
    return y if b is None else y + b[experts]


def takes_matmul(x, w, b=None, experts=None) -> bool:
    """Whether matmul_leaf takes this call: float32 activations, and a float weight or a packed
    one with a fused kernel."""
    if x.dtype != np.float32:
        return False
    return isinstance(w, (np.ndarray, PackedWeight)) or getattr(w, "fmt", None) in PACKED_FORMATS + KQUANT_GEMV_FORMATS + HALF_FORMATS


KQUANT_GEMV_FORMATS = ("q4_k", "q6_k")   # K-quants with fused kernels (kquant_matmul.py)
HALF_FORMATS = ("bf16", "fp16")          # 16-bit floats as stored (halfmatmul.py)
STORED_FORMATS = ("q4_0", "q8_0", "mxfp4")   # read from a memory-mapped file's blocks (stored_gemv.py)
# ... when the weight is at least this big: a repacked copy of a big expert stack would read every
# expert from the file and double its memory; a small weight is repacked, as in memory (faster)
STORED_MIN_BYTES = 1 << 24
# Model.forward runs OpenBLAS on one thread; a float product of at least this many multiply-adds
# is shared out to minimoe's own worker threads instead (qmatmul.float_matmul).
THREADS_MIN_MACS = 2**24
GEMV_ROWS = 4            # rows up to which a stack of float experts is multiplied row by row

__all__ = ["matmul", "backend", "get_backend", "set_backend", "pack", "PackedWeight",
           "KernelInputError", "PACKED_FORMATS"]
