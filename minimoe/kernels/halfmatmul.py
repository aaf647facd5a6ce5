"""Matmul over bf16 and fp16 weights as stored: y = x @ W.T, W widened to float32 on the fly.

Shape legend: R rows of activations, E stacked matrices (experts), O output rows, I input width.
Formats: see minimoe/quant/bf16.py (bf16 is the top half of a float32; fp16 has its own exponent).

    matmul_bf16(x, w, experts=None)    x (..., I) float32, w (O, I) uint16 bf16 bits -> (..., O)
    matmul_fp16(x, w, experts=None)    x (..., I) float32, w (O, I) float16          -> (..., O)
    matmul_half(x, qt, experts=None)   qt a bf16 or fp16 QTensor (minimoe/quant/bf16.py, fp16.py):
                                       the model's weights as a memory-mapped checkpoint holds them

With a stack w (E, O, I), `experts` (R,) int64 says which matrix each row of x (R, I) uses: an
MoE layer's decode-step gather, one call for all K experts of a token.

Two paths, picked by the rows of x each matrix multiplies (R, or its share of R in a stack):

  decode (no matrix has more than GEMV_MAX_ROWS rows: one token's K experts, whatever K): a GEMV kernel that reads each 16-bit weight once and widens it in
      registers: 2 bytes a weight streamed in instead of 4, so about twice float32's speed when
      decoding is memory-bound.
          bf16:  a row of W is shifted into a float32 buffer (bits << 16), then dotted with x
          fp16:  the exponent is re-biased (15 -> 127) and the mantissa moved up 13 bits, into
                 float32 bits in a buffer; subnormals get 2^-14 taken off (Numba has no float16
                 type). It measured ~5x slower than the bf16 kernel here: see docs/kernels.md
  prefill (a matrix has more rows): widen TILE_ROWS rows of W at a time to float32 with NumPy and
      hand them to BLAS; the flops dominate there.

Each GEMV kernel has a NumPy twin with the same signature (MINIMOE_BACKEND=numpy runs it):

    gemv_bf16(x, w, experts, out)    x (R, I) float32, w (E, O, I) uint16, experts (R,) int64,
    gemv_fp16(x, w, experts, out)    w (E, O, I) uint16 (fp16 bits),       out (R, O) float32
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from minimoe.kernels.backend import twin
from minimoe.kernels.packed import KernelInputError, check_experts
from minimoe.kernels.qmatmul import _one_core, all_cores
from minimoe.quant.bf16 import bf16_to_float32

GEMV_MAX_ROWS = 4          # rows of x up to which the GEMV path is used
CHUNK = 16                 # output rows per parallel work item
TILE_ROWS = 256            # rows of W widened at a time in the prefill path

_FAST = {"reassoc", "contract", "nsz"}   # let sums be reordered (SIMD); keep inf/nan semantics


# ----------------------------------------------------------------------------------------------
# The GEMVs: out[r, o] = sum_i x[r, i] * W[experts[r], o, i]
# ----------------------------------------------------------------------------------------------

def gemv_bf16_numpy(x, w, experts, out):
    """W = bf16 bits << 16, viewed as float32."""
    for r in range(out.shape[0]):
        out[r] = bf16_to_float32(w[experts[r]]) @ x[r]                     # (O, I) @ (I,) -> (O,)


@twin(gemv_bf16_numpy)
@njit(parallel=True, fastmath=_FAST, cache=True)
def gemv_bf16(x, w, experts, out):
    R, O = out.shape
    I = x.shape[1]
    n_items = (O + CHUNK - 1) // CHUNK
    for item in prange(R * n_items):                        # (row of x, CHUNK output rows)
        r, c = item // n_items, item % n_items
        e = experts[r]
        bits = np.empty(I, np.uint32)
        row = bits.view(np.float32)                         # the same buffer, read as float32
        for o in range(c * CHUNK, min(O, c * CHUNK + CHUNK)):
            for i in range(I):                              # widen: bf16 is a float32's top half
                bits[i] = np.uint32(w[e, o, i]) << np.uint32(16)
            acc = np.float32(0.0)
            for i in range(I):                              # SIMD dot product
                acc += x[r, i] * row[i]
            out[r, o] = acc


def gemv_fp16_numpy(x, w, experts, out):
    """W = the fp16 values of the bits (NumPy's own float16 conversion)."""
    for r in range(out.shape[0]):
        out[r] = w[experts[r]].view(np.float16).astype(np.float32) @ x[r]  # (O, I) @ (I,) -> (O,)


@twin(gemv_fp16_numpy)
@njit(parallel=True, fastmath=_FAST, cache=True)
def gemv_fp16(x, w, experts, out):
    R, O = out.shape
    I = x.shape[1]
    n_items = (O + CHUNK - 1) // CHUNK
    two_m14 = np.float32(2.0 ** -14)                        # the smallest normal fp16
    for item in prange(R * n_items):
        r, c = item // n_items, item % n_items
        e = experts[r]
        bits = np.empty(I, np.uint32)
        mag = bits.view(np.float32)                         # the same buffer, read as float32
        for o in range(c * CHUNK, min(O, c * CHUNK + CHUNK)):
            for i in range(I):                              # |value| as float32 bits
                h = np.uint32(w[e, o, i])
                ex = (h >> np.uint32(10)) & np.uint32(0x1F)
                # exponent bias 15 -> 127; inf/NaN keep the top exponent; subnormals (ex = 0) are
                # written as (1 + m/1024) * 2^-14, and 2^-14 is taken off below: m * 2^-24
                ex32 = np.uint32(255) if ex == 31 else (np.uint32(113) if ex == 0 else ex + np.uint32(112))
                bits[i] = (ex32 << np.uint32(23)) | ((h & np.uint32(0x3FF)) << np.uint32(13))
            acc = np.float32(0.0)
            for i in range(I):                              # subnormal fix-up, sign, dot
                h = np.uint32(w[e, o, i])
                v = mag[i] - (two_m14 if (h & np.uint32(0x7C00)) == 0 else np.float32(0.0))
                acc += x[r, i] * (-v if h >> np.uint32(15) else v)
            out[r, o] = acc


for _k in (gemv_bf16, gemv_fp16):     # kernel.serial: one core, for GEMVs under PARALLEL_MIN_WEIGHTS
    _one_core(_k)

GEMV = {"bf16": gemv_bf16, "fp16": gemv_fp16}
HALF_FORMATS = tuple(GEMV)


def widen(w: np.ndarray, fmt: str) -> np.ndarray:
    """bf16 bits (uint16) or float16 values -> float32, any shape (the prefill path, the tests)."""
    return bf16_to_float32(w) if fmt == "bf16" else w.view(np.float16).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Checked entry points
# ----------------------------------------------------------------------------------------------

def matmul_bf16(x: np.ndarray, w: np.ndarray, experts: np.ndarray | None = None) -> np.ndarray:
    """x (..., I) float32 @ W.T for W (O, I) stored as bf16 bits (uint16) -> (..., O) float32.
    With a stack W (E, O, I), `experts` (R,) picks each row's matrix: x (R, I) -> (R, O)."""
    if not isinstance(w, np.ndarray) or w.dtype != np.uint16:
        raise KernelInputError(f"matmul_bf16: w must be the uint16 bits of a bf16 tensor, found "
                               f"{getattr(w, 'dtype', type(w).__name__)}")
    return _half_matmul(x, w, experts, "bf16")


def matmul_fp16(x: np.ndarray, w: np.ndarray, experts: np.ndarray | None = None) -> np.ndarray:
    """x (..., I) float32 @ W.T for W (O, I) stored as float16 -> (..., O) float32.
    With a stack W (E, O, I), `experts` (R,) picks each row's matrix: x (R, I) -> (R, O)."""
    if not isinstance(w, np.ndarray) or w.dtype != np.float16:
        raise KernelInputError(f"matmul_fp16: w must be a float16 array, found "
                               f"{getattr(w, 'dtype', type(w).__name__)}")
    return _half_matmul(x, w.view(np.uint16), experts, "fp16")


def matmul_half(x: np.ndarray, qt, experts: np.ndarray | None = None) -> np.ndarray:
    """x (..., I) float32 @ qt.T for a bf16 or fp16 QTensor qt of shape (O, I) or (E, O, I), read
    as stored: its bytes are the values' 16 bits, little-endian."""
    if qt.fmt not in HALF_FORMATS:
        raise KernelInputError(f"matmul_half: {qt.name or 'weight'} is {qt.fmt}; this kernel takes {HALF_FORMATS}")
    bits = qt.blocks.view("<u2").reshape(qt.shape)                          # (..., O, I) uint16, no copy
    return _half_matmul(x, bits, experts, qt.fmt)


def _half_matmul(x, w, experts, fmt):
    what = f"matmul with a {fmt} weight of shape {w.shape}"
    if w.ndim not in (2, 3):
        raise KernelInputError(f"{what}: w must be (O, I) or a stack (E, O, I)")
    stack = w if w.ndim == 3 else w[None]                                   # (E, O, I)

    def gemv(X, experts, out):
        R, O, I = X.shape[0], out.shape[1], X.shape[1]
        kernel = GEMV[fmt] if all_cores(R * O * I) else GEMV[fmt].serial
        kernel(X, np.ascontiguousarray(stack), experts, out)

    return stack_matmul(x, stack.shape[:2], w.shape[-1], experts, w.ndim == 3, what, gemv,
                        lambda e, o0, o1: widen(stack[e, o0:o1], fmt))      # (T, I) float32


def stack_matmul(x, EO: tuple, I: int, experts, stacked: bool, what: str, gemv, tile):
    """The shared frame of a matmul by a weight the kernels read as stored (this file's 16-bit
    floats, stored_gemv.py's GGUF blocks): x (..., I) float32 times a matrix (O, I), or row r of
    x (R, I) times matrix experts[r] of a stack of E. When no matrix has more than GEMV_MAX_ROWS
    rows (a decode step, K experts of a token), gemv(X (R, I), experts (R,), out (R, O)); else
    each matrix used is multiplied by BLAS, its rows decoded TILE_ROWS at a time by
    tile(e, o0, o1) -> float32 (o1 - o0, I)."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim < 1 or x.shape[-1] != I:
        raise KernelInputError(f"{what}: x must be float32 of shape (..., {I}), found "
                               f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    lead = x.shape[:-1]
    X = np.ascontiguousarray(x.reshape(-1, I))                              # (R, I)
    R = X.shape[0]
    E, O = EO
    experts = check_experts(experts, R, E, stacked, what)
    if experts is None:
        experts = np.zeros(R, np.int64)                                     # every row: matrix 0
    out = np.empty((R, O), np.float32)
    if R <= GEMV_MAX_ROWS or np.bincount(experts).max() <= GEMV_MAX_ROWS:   # decode: GEMV
        gemv(X, experts, out)
        return out.reshape(*lead, O)
    for e in np.unique(experts):                                            # prefill: per matrix,
        rows = np.flatnonzero(experts == e)                                 # decode tiles, then BLAS
        for o0 in range(0, O, TILE_ROWS):
            w = tile(e, o0, min(O, o0 + TILE_ROWS))                         # (T, I) float32
            out[rows, o0:o0 + w.shape[0]] = X[rows] @ w.T                   # (r, I) @ (I, T)
    return out.reshape(*lead, O)
