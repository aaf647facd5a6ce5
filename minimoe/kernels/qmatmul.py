"""Fused dequantize-and-multiply for packed weights: y = x @ W.T without ever making W in float.

Shape legend: R rows of activations, E stacked matrices (experts), O output rows, I input width,
nb = I/32 blocks per row, J bytes per block (16 or 32). Layout: see minimoe/kernels/packed.py.

Two paths, picked by the number of rows R:

  decode (R <= GEMV_MAX_ROWS): a GEMV over the packed bytes. Decoding one token reads every
      weight once and does 2 flops with it, so the time is the time to stream the bytes in: 4.5
      bits a weight for q4_0 against 32 for float32. Per output row o the kernel keeps nb partial
      sums t[b], one per block, adds up J bytes' worth of products into them (the inner loop over
      b is SIMD), then scales: y[o] = sum_b d[o, b] * t[b]. The constant parts of a block's
      values are folded into one number per block, xs[b] = sum of x over block b:
          q4_0   w = d (q - 8)        y = sum_b d_b (t_b - 8 xs_b)
          q4_1   w = d q + m          y = sum_b d_b t_b + m_b xs_b
          q8_0   w = d q              y = sum_b d_b t_b
          mxfp4  w = d LUT[q]         y = sum_b d_b t_b        (LUT: E2M1 values, doubled)
      Each row r of x may use its own matrix experts[r] of a stack: that is an MoE layer's
      "gather" for a decode step, one call for all K experts of a token.

  prefill (R > GEMV_MAX_ROWS): dequantize TILE_ROWS rows at a time into a small float32 buffer
      (it stays in cache) and hand each tile to BLAS: y[:, tile] = xk @ tile.T. The flops then
      dominate, and BLAS does them best.

Each kernel has a NumPy twin with the same signature (run with MINIMOE_BACKEND=numpy).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from minimoe.kernels.backend import twin
from minimoe.kernels.packed import BLOCK, KernelInputError, PackedWeight, to_kernel_order

GEMV_MAX_ROWS = 4          # rows of x up to which the GEMV path is used
TILE_ROWS = 128            # rows of W dequantized per tile in the prefill path (128 x 4096 x 4 B = 2 MiB)
CHUNK = 16                 # output rows per parallel work item in the GEMV kernels

# MXFP4's E2M1 values, doubled to integers (ggml's kvalues_mxfp4), to pair with the halved scale
MXFP4_LUT2 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.float32)

_FAST = {"reassoc", "contract", "nsz"}   # let sums be reordered (SIMD); keep inf/nan semantics


# ----------------------------------------------------------------------------------------------
# The GEMVs. Arguments, the same for every format:
#   xk (R, 32, nb) float32   activations in kernel order (packed.to_kernel_order)
#   xs (R, nb)     float32   sum of x over each block
#   d, m           float32   (E, O, nb) scales and (q4_1) minimums
#   qs             (E, O, J, nb) the value bytes
#   experts (R,)   int64     which matrix of the stack row r multiplies (all 0 for one matrix)
#   out (R, O)     float32   written
# ----------------------------------------------------------------------------------------------

def _gemv_numpy(xk, weights, experts, out):
    """Shared by the twins: weights (R, O, 32, nb) float32 in kernel order -> out (R, O)."""
    R, O = out.shape
    w = weights.reshape(R, O, -1)                                  # (R, O, I)
    out[:] = (w @ xk.reshape(R, -1, 1))[:, :, 0]                   # (R, O, I) @ (R, I, 1) -> (R, O)


def _nibbles(qs):
    """uint8 (..., 16, nb) -> codes (..., 32, nb): low nibbles are values 0..15, high 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-2)


def gemv_q4_0_numpy(xk, xs, d, m, qs, experts, out):
    """y[r, o] = sum_i W[experts[r], o, i] x[r, i] with W = d * (q - 8)."""
    codes = _nibbles(qs[experts]).astype(np.float32)               # (R, O, 32, nb)
    _gemv_numpy(xk, d[experts][:, :, None, :] * (codes - 8), experts, out)


def gemv_q4_1_numpy(xk, xs, d, m, qs, experts, out):
    """W = d * q + m."""
    codes = _nibbles(qs[experts]).astype(np.float32)               # (R, O, 32, nb)
    _gemv_numpy(xk, d[experts][:, :, None, :] * codes + m[experts][:, :, None, :], experts, out)


def gemv_q8_0_numpy(xk, xs, d, m, qs, experts, out):
    """W = d * q, q int8."""
    _gemv_numpy(xk, d[experts][:, :, None, :] * qs[experts].astype(np.float32), experts, out)


def gemv_mxfp4_numpy(xk, xs, d, m, qs, experts, out):
    """W = d * LUT2[q]: d = 2^(e-128), LUT2 = 2 * E2M1."""
    values = MXFP4_LUT2[_nibbles(qs[experts])]                     # (R, O, 32, nb)
    _gemv_numpy(xk, d[experts][:, :, None, :] * values, experts, out)


@twin(gemv_q4_0_numpy)
@njit(parallel=True, fastmath=_FAST, cache=True)
def gemv_q4_0(xk, xs, d, m, qs, experts, out):
    R = xk.shape[0]
    O, nb = qs.shape[1], qs.shape[3]
    n_chunks = (O + CHUNK - 1) // CHUNK
    for item in prange(R * n_chunks):                       # (row of x, chunk of output rows)
        r, c = item // n_chunks, item % n_chunks
        e = experts[r]
        t = np.empty(nb, np.float32)                        # one partial sum per block
        for o in range(c * CHUNK, min(O, c * CHUNK + CHUNK)):
            for b in range(nb):
                t[b] = np.float32(-8.0) * xs[r, b]          # the "- 8" of every code, folded in
            for j in range(16):
                for b in range(nb):                         # SIMD over blocks
                    q = np.uint32(qs[e, o, j, b])
                    lo = np.float32(np.uint32(q & np.uint32(0x0F)))     # element j
                    hi = np.float32(np.uint32(q >> np.uint32(4)))       # element j + 16
                    t[b] += xk[r, j, b] * lo + xk[r, 16 + j, b] * hi
            acc = np.float32(0.0)
            for b in range(nb):
                acc += d[e, o, b] * t[b]
            out[r, o] = acc


@twin(gemv_q4_1_numpy)
@njit(parallel=True, fastmath=_FAST, cache=True)
def gemv_q4_1(xk, xs, d, m, qs, experts, out):
    R = xk.shape[0]
    O, nb = qs.shape[1], qs.shape[3]
    n_chunks = (O + CHUNK - 1) // CHUNK
    for item in prange(R * n_chunks):
        r, c = item // n_chunks, item % n_chunks
        e = experts[r]
        t = np.empty(nb, np.float32)
        for o in range(c * CHUNK, min(O, c * CHUNK + CHUNK)):
            t[:] = 0.0
            for j in range(16):
                for b in range(nb):
                    q = np.uint32(qs[e, o, j, b])
                    lo = np.float32(np.uint32(q & np.uint32(0x0F)))
                    hi = np.float32(np.uint32(q >> np.uint32(4)))
                    t[b] += xk[r, j, b] * lo + xk[r, 16 + j, b] * hi
            acc = np.float32(0.0)
            for b in range(nb):
                acc += d[e, o, b] * t[b] + m[e, o, b] * xs[r, b]   # the minimum times the block's sum
            out[r, o] = acc


@twin(gemv_q8_0_numpy)
@njit(parallel=True, fastmath=_FAST, cache=True)
def gemv_q8_0(xk, xs, d, m, qs, experts, out):
    R = xk.shape[0]
    O, nb = qs.shape[1], qs.shape[3]
    n_chunks = (O + CHUNK - 1) // CHUNK
    for item in prange(R * n_chunks):
        r, c = item // n_chunks, item % n_chunks
        e = experts[r]
        t = np.empty(nb, np.float32)
        for o in range(c * CHUNK, min(O, c * CHUNK + CHUNK)):
            t[:] = 0.0
            for j in range(32):
                for b in range(nb):
                    t[b] += xk[r, j, b] * np.float32(qs[e, o, j, b])
            acc = np.float32(0.0)
            for b in range(nb):
                acc += d[e, o, b] * t[b]
            out[r, o] = acc


@twin(gemv_mxfp4_numpy)
@njit(parallel=True, fastmath=_FAST, cache=True)
def gemv_mxfp4(xk, xs, d, m, qs, experts, out):
    R = xk.shape[0]
    O, nb = qs.shape[1], qs.shape[3]
    n_chunks = (O + CHUNK - 1) // CHUNK
    lut = MXFP4_LUT2
    for item in prange(R * n_chunks):
        r, c = item // n_chunks, item % n_chunks
        e = experts[r]
        t = np.empty(nb, np.float32)
        for o in range(c * CHUNK, min(O, c * CHUNK + CHUNK)):
            t[:] = 0.0
            for j in range(16):
                for b in range(nb):
                    q = np.uint32(qs[e, o, j, b])
                    t[b] += xk[r, j, b] * lut[q & np.uint32(0x0F)] + xk[r, 16 + j, b] * lut[q >> np.uint32(4)]
            acc = np.float32(0.0)
            for b in range(nb):
                acc += d[e, o, b] * t[b]
            out[r, o] = acc


# ----------------------------------------------------------------------------------------------
# Dequantize rows o0 .. o0+T of matrix e into a float32 tile (T, 32*nb) in kernel order:
# tile[t, j*nb + b] = W[e, o0 + t, b*32 + j]. The prefill path multiplies tiles with BLAS;
# `dequantize` below turns a whole matrix back into the original order.
# ----------------------------------------------------------------------------------------------

def _tile_numpy(values, d, m, out):
    """values (T, 32, nb) float32 codes or table values, d/m (T, nb) -> out (T, 32*nb)."""
    T, _, nb = values.shape
    w = d[:, None, :] * values                                      # (T, 1, nb) * (T, 32, nb)
    if m is not None:
        w = w + m[:, None, :]
    out[:] = w.reshape(T, 32 * nb)


def dequant_tile_q4_0_numpy(d, m, qs, e, o0, out):
    """out (T, 32*nb) = rows o0.. of W[e], q4_0: d * (q - 8)."""
    T = out.shape[0]
    codes = _nibbles(qs[e, o0:o0 + T]).astype(np.float32)          # (T, 32, nb)
    _tile_numpy(codes - 8, d[e, o0:o0 + T], None, out)


def dequant_tile_q4_1_numpy(d, m, qs, e, o0, out):
    T = out.shape[0]
    codes = _nibbles(qs[e, o0:o0 + T]).astype(np.float32)
    _tile_numpy(codes, d[e, o0:o0 + T], m[e, o0:o0 + T], out)


def dequant_tile_q8_0_numpy(d, m, qs, e, o0, out):
    T = out.shape[0]
    _tile_numpy(qs[e, o0:o0 + T].astype(np.float32), d[e, o0:o0 + T], None, out)


def dequant_tile_mxfp4_numpy(d, m, qs, e, o0, out):
    T = out.shape[0]
    _tile_numpy(MXFP4_LUT2[_nibbles(qs[e, o0:o0 + T])], d[e, o0:o0 + T], None, out)


@twin(dequant_tile_q4_0_numpy)
@njit(parallel=True, cache=True)
def dequant_tile_q4_0(d, m, qs, e, o0, out):
    T, nb = out.shape[0], qs.shape[3]
    for t in prange(T):
        o = o0 + t
        for j in range(16):
            for b in range(nb):
                q = np.uint32(qs[e, o, j, b])
                out[t, j * nb + b] = d[e, o, b] * (np.float32(np.uint32(q & np.uint32(0x0F))) - np.float32(8))
                out[t, (16 + j) * nb + b] = d[e, o, b] * (np.float32(np.uint32(q >> np.uint32(4))) - np.float32(8))


@twin(dequant_tile_q4_1_numpy)
@njit(parallel=True, cache=True)
def dequant_tile_q4_1(d, m, qs, e, o0, out):
    T, nb = out.shape[0], qs.shape[3]
    for t in prange(T):
        o = o0 + t
        for j in range(16):
            for b in range(nb):
                q = np.uint32(qs[e, o, j, b])
                out[t, j * nb + b] = d[e, o, b] * np.float32(np.uint32(q & np.uint32(0x0F))) + m[e, o, b]
                out[t, (16 + j) * nb + b] = d[e, o, b] * np.float32(np.uint32(q >> np.uint32(4))) + m[e, o, b]


@twin(dequant_tile_q8_0_numpy)
@njit(parallel=True, cache=True)
def dequant_tile_q8_0(d, m, qs, e, o0, out):
    T, nb = out.shape[0], qs.shape[3]
    for t in prange(T):
        o = o0 + t
        for j in range(32):
            for b in range(nb):
                out[t, j * nb + b] = d[e, o, b] * np.float32(qs[e, o, j, b])


@twin(dequant_tile_mxfp4_numpy)
@njit(parallel=True, cache=True)
def dequant_tile_mxfp4(d, m, qs, e, o0, out):
    T, nb = out.shape[0], qs.shape[3]
    lut = MXFP4_LUT2
    for t in prange(T):
        o = o0 + t
        for j in range(16):
            for b in range(nb):
                q = np.uint32(qs[e, o, j, b])
                out[t, j * nb + b] = d[e, o, b] * lut[q & np.uint32(0x0F)]
                out[t, (16 + j) * nb + b] = d[e, o, b] * lut[q >> np.uint32(4)]


GEMV = {"q4_0": gemv_q4_0, "q4_1": gemv_q4_1, "q8_0": gemv_q8_0, "mxfp4": gemv_mxfp4}
DEQUANT_TILE = {"q4_0": dequant_tile_q4_0, "q4_1": dequant_tile_q4_1, "q8_0": dequant_tile_q8_0,
                "mxfp4": dequant_tile_mxfp4}

_NO_EXPERT = np.zeros(GEMV_MAX_ROWS, np.int64)


# ----------------------------------------------------------------------------------------------
# The checked entry points
# ----------------------------------------------------------------------------------------------

def _check_x(x: np.ndarray, I: int, what: str) -> None:
    if not isinstance(x, np.ndarray):
        raise KernelInputError(f"{what}: x must be a numpy array, found {type(x).__name__}")
    if x.dtype != np.float32:
        raise KernelInputError(f"{what}: x must be float32, found {x.dtype}")
    if x.ndim < 1 or x.shape[-1] != I:
        raise KernelInputError(f"{what}: x must have shape (..., {I}) to multiply a weight of input "
                               f"width {I}, found {x.shape}")


def block_sums(xk: np.ndarray) -> np.ndarray:
    """xk (R, 32, nb) -> xs (R, nb): the sum of x over each block."""
    return xk.sum(axis=1)


def qmatmul(x: np.ndarray, w: PackedWeight, experts: np.ndarray | None = None) -> np.ndarray:
    """x (..., I) float32 @ W.T for a packed W (O, I) -> (..., O) float32.

    With a stack W (E, O, I), `experts` (R,) says which matrix each of the R rows of x uses
    (the decode path of an MoE layer): x (R, I) -> (R, O)."""
    I = w.shape[-1]
    what = f"matmul with a packed {w.fmt} weight of shape {w.shape}"
    _check_x(x, I, what)
    lead = x.shape[:-1]
    X = x.reshape(-1, I)                                              # (R, I)
    R = X.shape[0]
    E, O = w.d.shape[0], w.d.shape[1]
    if experts is None:
        if w.stacked:
            raise KernelInputError(f"{what}: a stack of matrices needs `experts`, one index per row")
        experts = _NO_EXPERT[:R] if R <= GEMV_MAX_ROWS else None
    else:
        experts = np.asarray(experts)
        if experts.shape != (R,) or experts.dtype != np.int64:
            raise KernelInputError(f"{what}: experts must be int64 of shape ({R},), one per row of x, "
                                   f"found {experts.dtype} {experts.shape}")
        if R and (experts.min() < 0 or experts.max() >= E):
            raise KernelInputError(f"{what}: experts must lie in 0..{E - 1}, found "
                                   f"{experts.min()}..{experts.max()}")
    out = np.empty((R, O), np.float32)
    if R == 0:
        return out.reshape(*lead, O)
    xk = to_kernel_order(X)                                           # (R, 32, nb)
    if experts is not None and (R <= GEMV_MAX_ROWS or len(np.unique(experts)) > 1):
        if R > GEMV_MAX_ROWS:                                        # rows for several experts: one by one
            for e in np.unique(experts):
                rows = np.flatnonzero(experts == e)
                out[rows] = qmatmul(X[rows], w[int(e)] if w.stacked else w)
            return out.reshape(*lead, O)
        GEMV[w.fmt](xk, block_sums(xk), w.d, w.m, w.qs, experts, out)
        return out.reshape(*lead, O)
    e = int(experts[0]) if experts is not None else 0
    xk2 = xk.reshape(R, -1)                                           # (R, I) kernel order
    tile = np.empty((min(TILE_ROWS, O), xk2.shape[1]), np.float32)    # (T, I) reused buffer
    dequant = DEQUANT_TILE[w.fmt]
    for o0 in range(0, O, TILE_ROWS):
        T = min(TILE_ROWS, O - o0)
        dequant(w.d, w.m, w.qs, e, o0, tile[:T])                       # (T, I) float32
        np.matmul(xk2, tile[:T].T, out=out[:, o0:o0 + T])              # (R, I) @ (I, T) -> (R, T)
    return out.reshape(*lead, O)


def dequantize(w: PackedWeight) -> np.ndarray:
    """A packed matrix (O, I) or stack (E, O, I) back to float32 in the original order."""
    E, O, nb = w.d.shape
    out = np.empty((E, O, 32 * nb), np.float32)
    for e in range(E):
        DEQUANT_TILE[w.fmt](w.d, w.m, w.qs, e, 0, out[e])            # (O, 32*nb) kernel order
    natural = out.reshape(E, O, BLOCK, nb).transpose(0, 1, 3, 2).reshape(E, O, 32 * nb)
    return np.ascontiguousarray(natural.reshape(w.shape))
