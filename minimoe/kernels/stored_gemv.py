"""Matmul over packed weights read as stored (GGUF blocks), for memory-mapped checkpoints.

Shape legend: R rows of activations, E stacked matrices (experts), O output rows, I input width,
nb = I / 32 blocks per row, BB bytes per block.

The fused kernels of qmatmul.py read a repacked copy of a packed weight (packed.py), made once
for the whole tensor on first use. For a memory-mapped checkpoint that copy is the wrong trade:
making it reads every expert of the stack from the file, and keeps a second copy of the weights
in memory. So a packed weight whose bytes are memory-mapped is multiplied here, from the GGUF
blocks as the file holds them (minimoe/quant/q4_0.py, q8_0.py, mxfp4.py draw their bytes):

  decode (R <= 4 rows): a GEMV that walks each used row's blocks once, decoding the scale
      and the 16 or 32 value bytes in registers. Only the rows of the experts the router picked
      are read, so only their pages come in from the file.
  prefill (R > 4): per matrix used, 256 rows at a time decoded to float32 with the format's
      NumPy decoder, then BLAS (the frame both share: halfmatmul.py's stack_matmul).

    gemv_stored(x, blocks, experts, fmt_id, out)   x (R, I) float32, blocks (E, O, nb*BB) uint8,
                                                   experts (R,) int64, out (R, O) float32

Each block's dot product is  d * sum_j value(q_j) * x_j  with
    q4_0    d = fp16 bytes 0..1 (a 65536-entry table: bits -> value),  value(q) = q - 8,         q from the nibbles of bytes 2..17
    q8_0    d = fp16 bytes 0..1,  value(q) = q (int8),      bytes 2..33
    mxfp4   d = 2^(e - 128) for the E8M0 byte 0, value(q) = 2 * E2M1[q] (ggml's doubled table)
For q4_0 and q8_0 the offset comes out of the sum, as in qmatmul.py: with xs_b = sum_j x_j,
    q4_0    d * (sum_j q_j x_j - 8 xs_b),   q the unsigned nibble
    q8_0    d * (sum_j u_j x_j - 128 xs_b), u = q + 128, the stored byte with its top bit flipped
so the loop over j only widens bytes to float and multiplies, which the compiler vectorizes; a
row's 32 partial sums (one per position j in a block) are added once, at the row's end.
The NumPy twin decodes whole matrices with the format module and multiplies: the oracle.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from minimoe.kernels.backend import twin
from minimoe.kernels.halfmatmul import stack_matmul
from minimoe.kernels.packed import KernelInputError
from minimoe.kernels.qmatmul import _one_core, all_cores
from minimoe.quant import format_module

CHUNK = 16                 # output rows per parallel work item (GEMV_MAX_ROWS, TILE_ROWS: halfmatmul.py)
STORED_FORMATS = ("q4_0", "q8_0", "mxfp4")
FMT_ID = {f: i for i, f in enumerate(STORED_FORMATS)}
MXFP4_X2 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.float32)
FP16 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)  # bits -> value
MXFP4_SCALE = np.ldexp(np.float32(1), np.arange(256) - 128).astype(np.float32)   # E8M0 byte -> 2^(e - 128)

_FAST = {"reassoc", "contract", "nsz"}


def gemv_stored_numpy(x, blocks, experts, fmt_id, out):
    """Each row's matrix decoded whole (the format's dequantize_blocks), then (O, I) @ (I,)."""
    spec = format_module(STORED_FORMATS[fmt_id])
    O, I = out.shape[1], x.shape[1]
    for r in range(out.shape[0]):
        w = spec.dequantize_blocks(blocks[experts[r]].reshape(-1, spec.BLOCK_BYTES)).reshape(O, I)
        out[r] = w @ x[r]                                           # (O, I) @ (I,) -> (O,)


@njit(inline="always")
def _row_dot(x, r, w, fmt_id, nb, xs, lanes):
    """x[r] . (one row of a matrix), the row's GGUF blocks w (nb*BB,) uint8; xs (R, nb) the block
    sums of x, lanes a float32 (32,) buffer: lanes[j] sums element j of every block, so that the
    j loops are SIMD and each row ends in one reduction."""
    lanes[:] = 0
    if fmt_id == 2:                                                 # mxfp4: E2M1 codes, E8M0 scale
        for b in range(nb):
            p, i0 = b * 17, b * 32
            d = MXFP4_SCALE[w[p]]
            for j in range(16):
                q = np.int32(w[p + 1 + j])
                lanes[j] += d * (MXFP4_X2[q & 15] * x[r, i0 + j])             # low nibble: element j
                lanes[16 + j] += d * (MXFP4_X2[q >> 4] * x[r, i0 + 16 + j])   # high: element j + 16
        return lanes.sum()
    corr = np.float32(0.0)
    if fmt_id == 0:                                                 # q4_0: d * (sum_j q_j x_j - 8 xs_b)
        for b in range(nb):
            p, i0 = b * 18, b * 32
            d = FP16[np.int32(w[p]) | (np.int32(w[p + 1]) << 8)]
            for j in range(16):
                q = np.int32(w[p + 2 + j])
                lanes[j] += d * (np.float32(q & 15) * x[r, i0 + j])
                lanes[16 + j] += d * (np.float32(q >> 4) * x[r, i0 + 16 + j])
            corr += d * xs[r, b]
        return lanes.sum() - 8 * corr
    for b in range(nb):                                             # q8_0: d * (sum_j u_j x_j - 128 xs_b),
        p, i0 = b * 34, b * 32                                      # u = q + 128 = the byte ^ 0x80
        d = FP16[np.int32(w[p]) | (np.int32(w[p + 1]) << 8)]
        for j in range(32):
            lanes[j] += d * (np.float32(w[p + 2 + j] ^ 128) * x[r, i0 + j])
        corr += d * xs[r, b]
    return lanes.sum() - 128 * corr


@twin(gemv_stored_numpy)
@njit(parallel=True, fastmath=_FAST, cache=True)
def gemv_stored(x, blocks, experts, fmt_id, out):
    R, O = out.shape
    I = x.shape[1]
    nb = I // 32
    xs = np.empty((R, nb), np.float32)                              # (R, nb) block sums of x
    for r in range(R):                                              # (plain loops: an array .sum()
        for b in range(nb):                                         # here slows the prange 5x)
            t = np.float32(0.0)
            for j in range(32):
                t += x[r, b * 32 + j]
            xs[r, b] = t
    n_items = (O + CHUNK - 1) // CHUNK
    for item in prange(R * n_items):                                # (row of x, CHUNK output rows)
        r, c = item // n_items, item % n_items
        e = experts[r]
        lanes = np.empty(32, np.float32)
        for o in range(c * CHUNK, min(O, c * CHUNK + CHUNK)):
            out[r, o] = _row_dot(x, r, blocks[e, o], fmt_id, nb, xs, lanes)


_one_core(gemv_stored)                 # gemv_stored.serial: one core, for small GEMVs


def matmul_stored(x: np.ndarray, qt, experts: np.ndarray | None = None) -> np.ndarray:
    """x (..., I) float32 @ qt.T for a q4_0 / q8_0 / mxfp4 QTensor of shape (O, I), or row r of
    x (R, I) times qt[experts[r]] for a stack (E, O, I): from its GGUF bytes, no repacked copy."""
    if qt.fmt not in STORED_FORMATS:
        raise KernelInputError(f"matmul_stored: {qt.name or 'weight'} is {qt.fmt}; this kernel takes "
                               f"{', '.join(STORED_FORMATS)}")
    what = f"matmul with a stored {qt.fmt} weight of shape {qt.shape}"
    stack = qt.blocks if len(qt.shape) == 3 else qt.blocks[None]               # (E, O, nb*BB)
    I, spec = qt.shape[-1], qt.format

    def gemv(X, experts, out):
        R, O = out.shape
        kernel = gemv_stored if all_cores(R * O * I) else gemv_stored.serial
        kernel(X, stack, experts, FMT_ID[qt.fmt], out)

    def tile(e, o0, o1):                                                       # (T, I) float32
        return spec.dequantize_blocks(stack[e, o0:o1].reshape(-1, spec.BLOCK_BYTES)).reshape(o1 - o0, I)

    return stack_matmul(x, stack.shape[:2], I, experts, len(qt.shape) == 3, what, gemv, tile)
