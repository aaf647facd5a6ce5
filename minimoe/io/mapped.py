"""How a loaded checkpoint's tensors are held: memory-mapped as stored, widened, or quantized
while loading, one tensor at a time.

Shape legend: E experts, O output rows, I input width, R rows of a matrix (all leading axes).

    minimoe.load(folder)                      as stored: every tensor is a view of the file
    minimoe.load(folder, dtype=np.float32)    every float tensor widened to float32 (a copy)
    minimoe.load(folder, recipe="q4_0")       the matrices the recipe names (minimoe/quant/model.py,
                                              RECIPES) quantized while loading, the rest as stored

As stored (the default), per tensor:
    F32, F64                 the mapped array (copy-on-write: training updates it in memory only)
    packed (q4_0, mxfp4, ..) a QTensor over the mapped bytes
    BF16, F16 matrix         a bf16 / fp16 QTensor over the mapped bytes (minimoe/quant/bf16.py):
                             matmul reads the 16-bit values as they are (kernels/halfmatmul.py),
                             the embedding lookup decodes only the rows it looks up
    BF16, F16 vector         widened to float32: norm scales, biases, sinks (a few KB each); the
                             router (E, C) too, which routes in float32 as quantized models do

Nothing is read at load time but the checks: the scan for NaN and inf reads each tensor once and
then gives its pages back (minimoe/io/pages.py, release), so a loaded model holds almost no memory
until it runs, and decoding a token pages in only what that token reads: the embedding row, the
attention, the experts the router picks, the dense layers and the head.

Quantizing while loading reads a tensor R_CHUNK values at a time: widen the piece to float32,
quantize it, write its blocks into the result, give the piece's pages back. Peak memory is the
result plus one piece, never the float32 model. A tensor the checkpoint already stores packed stays
as stored (re-quantizing adds the errors of both formats).

A uint16 tensor is bf16 bits: that is how safetensors_file.map_tensors returns BF16, and neither a
minimoe nor a Hugging Face checkpoint holds any other 16-bit integer weight.
"""
from __future__ import annotations

import numpy as np

from minimoe.errors import CheckpointError
from minimoe.io.pages import release
from minimoe.quant.bf16 import bf16_to_float32

R_CHUNK = 1 << 22           # values quantized at a time (16 MB of float32)
AS_STORED_COMPONENTS = ("embedding", "attention", "ffn", "experts", "shared_experts", "head", "mtp")


def _is_packed(arr) -> bool:
    return hasattr(arr, "fmt") and hasattr(arr, "blocks")


def to_float32(arr: np.ndarray) -> np.ndarray:
    """A float array of any stored precision as float32 (bf16 bits widened by a shift); float32 as is."""
    if arr.dtype == np.uint16:
        return bf16_to_float32(arr)                      # the top half of a float32: exact
    return arr.astype(np.float32, copy=False)


def hold(params: dict, cfg, source: str, recipe=None, dtype=None, check_finite: bool = True) -> dict:
    """The arrays a Model gets, from `params` {minimoe name: mapped array or QTensor} as the
    checkpoint stores them (names and shapes already checked against `cfg`)."""
    from minimoe.io.checkpoint import check_finite_one
    from minimoe.quant.model import FLOAT, plan_quantization
    from minimoe.params import param_shapes
    plan = plan_quantization(cfg, recipe) if recipe is not None else {}
    order = {n: i for i, n in enumerate(param_shapes(cfg))}          # the model's order, not the file's
    out = {}
    for name in sorted(params, key=lambda n: order.get(n, len(order))):
        arr = params[name]
        fmt = plan[name].fmt if name in plan else FLOAT
        if _is_packed(arr):
            value = arr                                                   # packed: as stored
        elif fmt != FLOAT:
            value = quantize_piecewise(arr, fmt, name, source)            # (checks finiteness itself)
        elif dtype is not None:
            value = np.ascontiguousarray(to_float32(arr), dtype=dtype)    # widened: the old way
        else:
            value = as_stored(name, arr)
        if check_finite and fmt == FLOAT:
            check_finite_one(name, value, source)
        release(arr)                                                      # its pages, read once
        if _is_packed(value):
            release(value.blocks)
        out[name] = value
    return out


def as_stored(name: str, arr: np.ndarray):
    """One tensor as stored (see the module docstring): the array, or a bf16/fp16 QTensor over it."""
    from minimoe.params import component
    from minimoe.quant import QTensor
    from minimoe.quant.model import is_matrix
    half = {np.dtype(np.uint16): "bf16", np.dtype(np.float16): "fp16"}.get(arr.dtype)
    if half is None:                                                      # F32 / F64: the mapped view (a
        return np.ascontiguousarray(arr)                                  # strided one is copied, as below)
    if not (is_matrix(name, arr.shape) and component(name) in AS_STORED_COMPONENTS
            and not name.endswith("shared_gate.weight")):
        return to_float32(arr)                                            # a vector or the router
    # a layout change made by a Hugging Face name map (gpt-oss's interleaved gate/up) is a view
    # with strides; the kernels read rows, so such a tensor is copied once, in its 16 bits
    values = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)        # (n * 2,) bytes, no copy if contiguous
    return QTensor(half, arr.shape, values.reshape(*arr.shape[:-1], arr.shape[-1] * 2), name)


def quantize_piecewise(src: np.ndarray, fmt: str, name: str, source: str):
    """Quantize a (O, I) or (E, O, I) array to `fmt`, R_CHUNK values at a time: the bytes equal
    minimoe.quant.quantize(src, fmt), since every block is quantized alone."""
    from minimoe.quant import QTensor, QuantError, format_module, quantize
    from minimoe.quant.qtensor import check_row_length, packed_shape
    spec = format_module(fmt)
    try:
        check_row_length(src.shape, spec, name)
    except QuantError as e:
        raise CheckpointError(f"{source}: {e}") from None
    out = np.empty(packed_shape(src.shape, spec), np.uint8)              # (..., O, I/BS*BB)
    stack = src.reshape(1, *src.shape) if src.ndim == 2 else src          # (E, O, I), a view
    blocks = out.reshape(1, *out.shape) if out.ndim == 2 else out         # (E, O, I/BS*BB)
    O, I = stack.shape[1:]
    step = max(1, R_CHUNK // max(I, 1))                                   # rows per piece
    for e in range(stack.shape[0]):
        for r in range(0, O, step):
            piece = stack[e, r:r + step]                                  # (rows, I) as stored
            try:
                blocks[e, r:r + step] = quantize(to_float32(piece), fmt, name=name).blocks
            except QuantError as err:
                raise CheckpointError(f"{source}: {err}") from None
            release(piece)
    return QTensor(fmt, src.shape, out, name)
