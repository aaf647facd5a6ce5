"""Fused dequantize-and-multiply for K-quant weights (q4_k, q6_k: the two formats of a Q4_K_M file),
reading the GGUF bytes as they are. Byte layouts: minimoe/quant/q4_k.py and q6_k.py.

Shape legend: R rows of activations, E stacked matrices (experts), O output rows, I input width,
nb = I / 256 super-blocks per row, BB bytes per super-block (144 or 210).

    blocks (E, O, nb * BB) uint8    the QTensor's bytes, unchanged (qt.blocks, with E = 1 for one matrix)
    x (R, I) float32, experts (R,) int64 (row r multiplies matrix experts[r]), out (R, O) float32

decode (R <= GEMV_MAX_ROWS): a GEMV. Per output row o and super-block, the kernel decodes the
    fp16 d (and dmin) and the sub-block scales once, then for each sub-block j of n values adds
        q4_k   w = d sc_j q - dmin m_j       y += d sc_j (sum q x) - dmin m_j (sum x)
        q6_k   w = d sc_j (q - 32)           y += d sc_j (sum (q - 32) x)
    so the inner loop is integer codes times floats, and the scales multiply once per sub-block.
prefill (R > GEMV_MAX_ROWS): dequantize each matrix once and hand it to BLAS.

Each Numba kernel sits under its NumPy twin (same signature; MINIMOE_BACKEND=numpy runs the twins).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from minimoe.kernels.backend import configure_numba, parallel_ok, twin
from minimoe.kernels.packed import KernelInputError
from minimoe.kernels.qmatmul import _one_core

configure_numba()

GEMV_MAX_ROWS = 4
KQUANT_GEMV_FORMATS = ("q4_k", "q6_k")
_FAST = {"reassoc", "contract", "nsz"}


def _dequantized_rows(blocks, fmt, experts, I):
    """The float32 matrices rows use: (R, O, I), decoded by the format module (the reference)."""
    from minimoe.quant import format_module
    module = format_module(fmt)
    E, O, _ = blocks.shape
    used = np.unique(experts)
    dense = {int(e): module.dequantize_blocks(blocks[e].reshape(-1, module.BLOCK_BYTES)).reshape(O, I)
             for e in used}
    return dense


def gemv_q4_k_numpy(x, blocks, experts, out):
    """y[r, o] = sum_i W[experts[r], o, i] x[r, i], W decoded by quant/q4_k.py."""
    dense = _dequantized_rows(blocks, "q4_k", experts, x.shape[1])
    for r in range(x.shape[0]):
        out[r] = dense[int(experts[r])] @ x[r]                       # (O, I) @ (I,) -> (O,)


def gemv_q6_k_numpy(x, blocks, experts, out):
    """y[r, o] = sum_i W[experts[r], o, i] x[r, i], W decoded by quant/q6_k.py."""
    dense = _dequantized_rows(blocks, "q6_k", experts, x.shape[1])
    for r in range(x.shape[0]):
        out[r] = dense[int(experts[r])] @ x[r]                       # (O, I) @ (I,) -> (O,)


@njit(inline="always")
def _fp16(lo, hi):
    """Two little-endian bytes of an IEEE half -> float32 (normal, subnormal, inf and nan)."""
    h = np.uint32(lo) | (np.uint32(hi) << np.uint32(8))
    sign = np.float32(-1.0) if h & np.uint32(0x8000) else np.float32(1.0)
    e = (h >> np.uint32(10)) & np.uint32(0x1F)
    f = h & np.uint32(0x3FF)
    if e == 0:
        return sign * np.float32(f) * np.float32(2.0 ** -24)
    if e == 31:
        return sign * np.float32(np.inf) if f == 0 else np.float32(np.nan)
    return sign * np.float32(1.0 + f / 1024.0) * np.float32(2.0 ** (int(e) - 15))


@njit(inline="always")
def _scale_min(row, s, j):
    """ggml get_scale_min_k4: the 6-bit (sc, m) of sub-block j from the 12 bytes at row[s:]."""
    if j < 4:
        return np.uint32(row[s + j]) & np.uint32(63), np.uint32(row[s + j + 4]) & np.uint32(63)
    sc = (np.uint32(row[s + j + 4]) & np.uint32(15)) | ((np.uint32(row[s + j - 4]) >> np.uint32(6)) << np.uint32(4))
    m = (np.uint32(row[s + j + 4]) >> np.uint32(4)) | ((np.uint32(row[s + j]) >> np.uint32(6)) << np.uint32(4))
    return sc, m


@twin(gemv_q4_k_numpy)
@njit(parallel=True, fastmath=_FAST, cache=True)
def gemv_q4_k(x, blocks, experts, out):
    R, I = x.shape
    O = out.shape[1]
    nb = I // 256
    for o in prange(O):
        for r in range(R):
            row = blocks[experts[r], o]
            acc = np.float32(0.0)
            for b in range(nb):
                base = b * 144
                d = _fp16(row[base], row[base + 1])
                dmin = _fp16(row[base + 2], row[base + 3])
                for c in range(4):                                  # 32 bytes: sub-blocks 2c (low), 2c+1 (high)
                    sc1, m1 = _scale_min(row, base + 4, 2 * c)
                    sc2, m2 = _scale_min(row, base + 4, 2 * c + 1)
                    q0 = base + 16 + 32 * c
                    x0 = b * 256 + 64 * c
                    s_lo = np.float32(0.0)
                    s_hi = np.float32(0.0)
                    x_lo = np.float32(0.0)
                    x_hi = np.float32(0.0)
                    for l in range(32):                             # SIMD: 32-bit lanes throughout
                        byte = np.uint32(row[q0 + l])
                        xa = x[r, x0 + l]
                        xb = x[r, x0 + 32 + l]
                        s_lo += np.float32(byte & np.uint32(15)) * xa
                        s_hi += np.float32(byte >> np.uint32(4)) * xb
                        x_lo += xa
                        x_hi += xb
                    acc += (d * np.float32(sc1) * s_lo - dmin * np.float32(m1) * x_lo
                            + d * np.float32(sc2) * s_hi - dmin * np.float32(m2) * x_hi)
            out[r, o] = acc


@twin(gemv_q6_k_numpy)
@njit(parallel=True, fastmath=_FAST, cache=True)
def gemv_q6_k(x, blocks, experts, out):
    R, I = x.shape
    O = out.shape[1]
    nb = I // 256
    for o in prange(O):
        for r in range(R):
            row = blocks[experts[r], o]
            acc = np.float32(0.0)
            for b in range(nb):
                base = b * 210
                d = _fp16(row[base + 208], row[base + 209])
                for h in range(2):                                  # two halves of 128 values
                    ql0 = base + 64 * h
                    qh0 = base + 128 + 32 * h
                    x0 = b * 256 + 128 * h
                    for half in range(2):                           # l in 0..15, then 16..31: a new scale
                        s0 = np.float32(0.0)                        # rows 0..3 of the half: values
                        s1 = np.float32(0.0)                        # x0 + 32 row + l
                        s2 = np.float32(0.0)
                        s3 = np.float32(0.0)
                        for l in range(16 * half, 16 * half + 16):  # SIMD: 32-bit lanes throughout
                            a = np.uint32(row[ql0 + l])
                            c = np.uint32(row[ql0 + 32 + l])
                            hb = np.uint32(row[qh0 + l])
                            q0 = (a & np.uint32(15)) | ((hb & np.uint32(3)) << np.uint32(4))
                            q1 = (c & np.uint32(15)) | (((hb >> np.uint32(2)) & np.uint32(3)) << np.uint32(4))
                            q2 = (a >> np.uint32(4)) | (((hb >> np.uint32(4)) & np.uint32(3)) << np.uint32(4))
                            q3 = (c >> np.uint32(4)) | ((hb >> np.uint32(6)) << np.uint32(4))
                            s0 += (np.float32(q0) - np.float32(32.0)) * x[r, x0 + l]
                            s1 += (np.float32(q1) - np.float32(32.0)) * x[r, x0 + 32 + l]
                            s2 += (np.float32(q2) - np.float32(32.0)) * x[r, x0 + 64 + l]
                            s3 += (np.float32(q3) - np.float32(32.0)) * x[r, x0 + 96 + l]
                        sc = base + 192 + 8 * h + half              # scale of row r's sub-block: + 2 r
                        acc += d * (np.float32(np.int8(row[sc])) * s0 + np.float32(np.int8(row[sc + 2])) * s1
                                    + np.float32(np.int8(row[sc + 4])) * s2 + np.float32(np.int8(row[sc + 6])) * s3)
            out[r, o] = acc


for _k in (gemv_q4_k, gemv_q6_k):     # kernel.serial: one core, where parallel loops may not start
    _one_core(_k)


def kmatmul(x: np.ndarray, qt, experts: np.ndarray | None = None) -> np.ndarray:
    """x (N, I) float32 @ qt (O, I).T -> (N, O), or row n times qt[experts[n]] of a stack (E, O, I)."""
    fmt = qt.fmt
    if fmt not in KQUANT_GEMV_FORMATS:
        raise KernelInputError(f"kmatmul: {qt.name or 'weight'} is {fmt}; this kernel takes {KQUANT_GEMV_FORMATS}")
    qt.validate()                                   # the kernels trust its bytes to fit its shape
    stacked = experts is not None
    if stacked:
        experts = np.asarray(experts)
        E = qt.shape[0] if len(qt.shape) == 3 else 0
        if (experts.ndim != 1 or len(experts) != len(x) or not np.issubdtype(experts.dtype, np.integer)
                or (experts.size and not 0 <= experts.min() <= experts.max() < E)):
            raise KernelInputError(f"kmatmul: experts must be {len(x)} integers in 0..{E - 1} for a stack "
                                   f"of shape {qt.shape}, found {experts.dtype} {experts.shape}")
    blocks = qt.blocks if stacked else qt.blocks[None]              # (E, O, nb * BB)
    O, I = qt.shape[-2], qt.shape[-1]
    if x.ndim != 2 or x.shape[1] != I:
        raise KernelInputError(f"kmatmul: x must be (N, {I}) for {qt.name or 'weight'} of shape {qt.shape}, "
                               f"got {x.shape}")
    R = x.shape[0]
    rows = np.zeros(R, np.int64) if not stacked else np.ascontiguousarray(experts, dtype=np.int64)
    out = np.empty((R, O), np.float32)
    if R <= GEMV_MAX_ROWS:
        kernel = gemv_q4_k if fmt == "q4_k" else gemv_q6_k
        kernel = kernel if parallel_ok() else kernel.serial                     # (a forked child: one core)
        kernel(np.ascontiguousarray(x, np.float32), blocks, rows, out)
        return out
    from minimoe.quant import format_module                          # prefill: decode once, BLAS
    module = format_module(fmt)
    for e in np.unique(rows):
        sel = np.flatnonzero(rows == e)                              # (n_e,)
        w = module.dequantize_blocks(blocks[e].reshape(-1, module.BLOCK_BYTES)).reshape(O, I)
        out[sel] = x[sel] @ w.T                                      # (n_e, I) @ (I, O) -> (n_e, O)
    return out
