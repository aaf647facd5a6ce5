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
    int8matmul.py  the decode GEMVs with x rounded to int8, in integers, as llama.cpp does
                 (minimoe.set_activation_precision; the default on a CPU with VNNI)
    vnni.py      the integer dot-product instruction (vpdpbusd) reached from Numba, and its fallback
    kquant_matmul.py  the same for the K-quants q4_k and q6_k, on the GGUF bytes as stored
    halfmatmul.py  bf16 / fp16 weights as stored (a memory-mapped checkpoint's QTensors): GEMV
                 kernels and tile-widen + BLAS
    stored_gemv.py q4_0 / q8_0 / mxfp4 weights of a memory-mapped checkpoint, read from their GGUF
                 blocks as the file holds them (the repacked copy would read every expert), and
                 large ones in memory past the repack budget (packed.py: set_repack_budget)
    moe.py       MoE dispatch (group assignments by expert), gather, combine (weighted scatter-add)
    ops.py       attention over the KV cache for a few new positions, router top-k
    train.py     row-wise RMSNorm, RoPE and softmax backward, forward and backward
"""
from __future__ import annotations

import numpy as np

from minimoe.io.pages import is_mapped
from minimoe.kernels.backend import backend, get_backend, set_backend
from minimoe.kernels.packed import (PACKED_FORMATS, KernelInputError, PackedWeight, check_experts, may_repack, pack,
                                    set_repack_budget)


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
    qm, km, hm, sm, _ = _compiled()
    if type(w) is np.ndarray:
        y = float_product(x, w, experts)                                  # (N, O)
    elif w.fmt in HALF_FORMATS:
        y = hm.matmul_half(x, w, experts)                                 # (N, O), bf16/fp16 as stored
    elif _reads_stored(w):
        y = sm.matmul_stored(x, w, experts)     # (N, O), as stored: a mapped file's, or past the repack budget
    elif w.fmt in KQUANT_GEMV_FORMATS:
        y = km.kmatmul(x, w, experts)                                     # (N, O), on the GGUF bytes
    else:
        y = qm.qmatmul(x, pack(w), experts)                               # (N, O)
    if b is None:
        return y
    return y + (b if experts is None else b[experts])                     # + (O,) or (N, O)


def matmul_many_leaf(x: np.ndarray, ws, bs, experts=None) -> list:
    """The compiled side of minimoe/nn/linear.py's `matmul_many`: [x (N, I) @ w.T (+ b)] for each
    w of ws, all reading the same x. A decode step's few rows times packed weights of one format
    (q4_0, q4_1, q8_0, mxfp4) go to ONE int8 kernel call (int8matmul.imatmul_many): x is rounded to
    int8 once, and one parallel loop covers all the weights' rows. Anything else, and the float
    activation path (minimoe.set_activation_precision("float")), is matmul_leaf for each weight."""
    fused = _fusable(x, ws, experts)
    if fused is None:
        return [matmul_leaf(x, w, b, experts) for w, b in zip(ws, bs)]
    pws, experts = fused
    qm, _, _, _, im = _compiled()
    R, I = x.shape
    ex = qm._NO_EXPERT[:R] if experts is None else experts
    parallel = qm.all_cores(R * sum(w.rows for w in pws) * I)
    ys = im.imatmul_many(np.ascontiguousarray(x), pws, ex, parallel)            # [(N, O_i)]
    return [y if b is None else y + (b if experts is None else b[experts]) for y, b in zip(ys, bs)]


def _fusable(x, ws, experts):
    """(the packed weights of ws, the checked experts) if one int8 kernel call can multiply them
    all by x, else None. Checks x and experts as qmatmul does (KernelInputError)."""
    qm = _compiled()[0]
    fmt = getattr(ws[0], "fmt", None)
    if (x.ndim != 2 or x.shape[0] > qm.GEMV_MAX_ROWS or fmt not in INT8_FORMATS
            or not qm.int8_activations()):
        return None
    for w in ws:
        if (type(w) is np.ndarray or w.fmt != fmt or w.shape[-1] != ws[0].shape[-1]
                or len(w.shape) != len(ws[0].shape) or _reads_stored(w)):
            return None
    pws = [w if isinstance(w, PackedWeight) else pack(w) for w in ws]
    if any(p.G != pws[0].G for p in pws):
        return None
    what = f"matmul with packed {fmt} weights of input width {ws[0].shape[-1]}"
    qm._check_x(x, ws[0].shape[-1], what)
    for p in pws:
        p.validate()                                                            # the kernel trusts its arrays
    return pws, check_experts(experts, x.shape[0], pws[0].d.shape[0], pws[0].stacked, what)


def _reads_stored(w) -> bool:
    """Whether matmul_leaf reads this packed weight from its GGUF blocks as stored (stored_gemv): a
    large one whose bytes are a memory-mapped file, or one held in memory whose kernel copies would
    pass the repack budget (packed.py)."""
    return (not isinstance(w, PackedWeight) and w.fmt in STORED_FORMATS and w.nbytes >= STORED_MIN_BYTES
            and (is_mapped(w.blocks) or not may_repack(w)))


def float_product(x: np.ndarray, w: np.ndarray, experts=None) -> np.ndarray:
    """x (N, I) float32 @ w.T for a float32 w (O, I), or row n times w[experts[n]] of a stack
    (E, O, I). Model.forward holds OpenBLAS to one thread (its threads spin, see model.py), so:

        a large product (>= THREADS_MIN_MACS multiply-adds, a prefill's), or a decode step's
        GEMV over a matrix of >= THREADS_MIN_GEMV_WEIGHTS weights (memory-bound: two cores
        stream the bytes faster than one)      -> shared out to minimoe's worker threads
        a few rows over a stack of experts     -> fmatmul, row by row
        otherwise                              -> one BLAS call (one matrix), or one per expert
    """
    qm = _compiled()[0]
    N, O, I = x.shape[0], w.shape[-2], w.shape[-1]
    if x.ndim != 2 or x.shape[1] != I:
        raise KernelInputError(f"matmul with a float weight of shape {w.shape}: x must be (N, {I}), "
                               f"found {x.shape}")
    if N * O * I >= THREADS_MIN_MACS or (N <= GEMV_ROWS and O * I >= THREADS_MIN_GEMV_WEIGHTS):
        return qm.float_matmul(x, w, experts)
    if experts is None:
        return x @ w.T                                                    # (N, I) @ (I, O)
    if N <= GEMV_ROWS:
        return qm.fmatmul(x, w, experts)                                  # row by row
    from minimoe.nn.linear import matmul as by_expert                     # BLAS, one matrix at a time:
    return by_expert(x, w, None, experts)                                 # the twin's own loop


_MODULES: list = []     # [qmatmul, kquant_matmul, halfmatmul, stored_gemv, int8matmul], once imported


def _compiled() -> list:
    """The kernel modules matmul_leaf calls, imported on the first matmul (importing them loads
    Numba) and kept: an import statement inside matmul_leaf would cost about a microsecond per call."""
    if not _MODULES:
        from minimoe.kernels import halfmatmul, int8matmul, kquant_matmul, qmatmul, stored_gemv
        _MODULES.extend((qmatmul, kquant_matmul, halfmatmul, stored_gemv, int8matmul))
    return _MODULES


def takes_matmul_many(x, ws, bs, experts=None) -> bool:
    """Whether matmul_many_leaf takes this call: matmul_leaf would take each weight."""
    return all(takes_matmul(x, w) for w in ws)


def takes_matmul(x, w, b=None, experts=None) -> bool:
    """Whether matmul_leaf takes this call: float32 activations, and a float weight or a packed
    one with a fused kernel."""
    if x.dtype != np.float32:
        return False
    return isinstance(w, (np.ndarray, PackedWeight)) or getattr(w, "fmt", None) in PACKED_FORMATS + KQUANT_GEMV_FORMATS + HALF_FORMATS


KQUANT_GEMV_FORMATS = ("q4_k", "q6_k")   # K-quants with fused kernels (kquant_matmul.py)
HALF_FORMATS = ("bf16", "fp16")          # 16-bit floats as stored (halfmatmul.py)
INT8_FORMATS = ("q4_0", "q4_1", "q8_0", "mxfp4")   # formats with int8-activation GEMVs (int8matmul.py)
STORED_FORMATS = ("q4_0", "q8_0", "mxfp4")   # read from a memory-mapped file's blocks (stored_gemv.py)
# ... when the weight is at least this big: a repacked copy of a big expert stack would read every
# expert from the file and double its memory; a small weight is repacked, as in memory (faster)
STORED_MIN_BYTES = 1 << 24
# Model.forward runs OpenBLAS on one thread; a float product of at least this many multiply-adds
# is shared out to minimoe's own worker threads instead (qmatmul.float_matmul).
THREADS_MIN_MACS = 2**24
THREADS_MIN_GEMV_WEIGHTS = 2**19   # ... and so is a one-token GEMV over a matrix this large (2 MiB)
GEMV_ROWS = 4            # rows up to which a stack of float experts is multiplied row by row

__all__ = ["matmul", "backend", "get_backend", "set_backend", "pack", "PackedWeight", "set_repack_budget",
           "KernelInputError", "PACKED_FORMATS"]
