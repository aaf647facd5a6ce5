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
          mxfp4  w = d LUT[q]         y = sum_b d_b t_b        (LUT: E2M1 values, doubled; the
                                                                  kernels compute it, e2m1x2)
      Each row r of x may use its own matrix experts[r] of a stack: that is an MoE layer's
      "gather" for a decode step, one call for all K experts of a token.

  prefill (R > GEMV_MAX_ROWS): dequantize a tile of rows (TILE_VALUES weights) at a time into a
      small float32 buffer (it stays in cache) and hand each tile to BLAS: y[:, tile] = xk @ tile.T.
      The flops then dominate, and BLAS does them best. Tiles go to one worker thread per core,
      each running the (one-core) dequantizing kernel and a one-thread BLAS call: no thread pool
      has to wake up for every tile (OpenBLAS's own threads, woken hundreds of times, measured up
      to 100x slower when another program shared the cores).
      With int8 activations (minimoe.set_activation_precision), up to INT8_GEMM_MAX_ROWS rows go
      instead to int8matmul.py's integer kernel, which measured faster there (an MoE expert's
      share of a short prompt); beyond, the tiles win.

The four formats' kernels share one skeleton per path, filled in with each format's few lines of
arithmetic ("The formats", below). Each kernel has a NumPy twin with the same signature (run with
MINIMOE_BACKEND=numpy).
"""
from __future__ import annotations

import os
import threading
import types
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit, prange

from minimoe.kernels.backend import Kernel, blas_threads, configure_numba, get_activation_precision, parallel_ok, twin
from minimoe.kernels.packed import BLOCK, KernelInputError, PackedWeight, check_experts, to_kernel_order

configure_numba()

GEMV_MAX_ROWS = 4          # rows of x up to which the GEMV path is used
PARALLEL_MIN_WEIGHTS = 2**18   # a packed GEMV touching fewer weights runs on one core (see below)
PARALLEL_MIN_FLOAT_WEIGHTS = 2**19   # the same for float32 (memory-bound: one core cannot stream them fast enough)
# With int8 activations, up to this many rows go to the integer kernel (int8matmul.imatmul_rows),
# more to the tiles + BLAS: measured on mixtral-mini's 1408 x 512 and 512 x 1408 q4_0 / q8_0
# matrices, 2 cores, the integer kernel was 2.6-3.3x as fast at 8 rows, 1.0-1.4x at 32, 0.5-0.9x
# at 64 (docs/kernels.md)
INT8_GEMM_MAX_ROWS = 32
TILE_VALUES = 2**18        # weights dequantized per tile in the prefill path (1 MiB of float32: stays in L2)
CHUNK = 16                 # output rows per parallel work item in the GEMV kernels

# MXFP4's E2M1 values, doubled to integers (ggml's kvalues_mxfp4), to pair with the halved scale
MXFP4_LUT2 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.float32)

_FAST = {"reassoc", "contract", "nsz"}   # let sums be reordered (SIMD); keep inf/nan semantics


@njit(inline="always")
def e2m1x2(c):
    """MXFP4_LUT2[c] computed from the 4-bit code c (uint32 0..15) with no table, so the SIMD loops
    need no gather. Bit 3 is the sign; the other three bits a = 0..7 map to the doubled E2M1
    magnitudes 0 1 2 3 4 6 8 12, which is a + max(a - 4, 0) + 2 max(a - 6, 0): linear pieces."""
    a = np.float32(np.uint32(c & np.uint32(7)))         # np.uint32(): keep 32-bit SIMD lanes
    mag = a + max(a - np.float32(4.0), np.float32(0.0)) + np.float32(2.0) * max(a - np.float32(6.0), np.float32(0.0))
    return mag * (np.float32(1.0) - np.float32(2.0) * np.float32(np.uint32(c >> np.uint32(3))))   # times +1 or -1


# ----------------------------------------------------------------------------------------------
# The formats. The four GEMVs share one skeleton (_gemv, below) and the four tile kernels another
# (_dequant_tile). A format's kernel is its skeleton called with the format's own pieces, which
# Numba inlines into the skeleton's loops (inline="always"): the compiled loops are those of a
# kernel written out in full, and each kernel keeps its own entry in Numba's on-disk cache.
#   the bytes           two 4-bit codes to a byte, byte j of a block holding codes j and 16 + j
#                       (_dots_nibbles, _row_nibbles), or one int8 code to a byte (_dots_bytes, _row_bytes)
#   code(c) = v         the value a code stands for, before its block's scale (np.float32: the code itself)
#   weight(d, m, v)     one weight, from v, its block's scale d and (q4_1) minimum m     (the tiles)
#   block(d, m, t, xs)  one block's share of a dot product, sum_j w_j x_j, from the sums
#                       t = sum_j v_j x_j and xs = sum_j x_j                          (the GEMVs)
#
#            bytes     code(c)          weight(d, m, v)    block(d, m, t, xs)
#   q4_0     nibbles   c, 0..15         d (v - 8)          d (t - 8 xs)
#   q4_1     nibbles   c, 0..15         d v + m            d t + m xs
#   q8_0     int8      c, -128..127     d v                d t
#   mxfp4    nibbles   e2m1x2(c)        d v                d t
# ----------------------------------------------------------------------------------------------

@njit(inline="always")
def _q4_0_weight(d, m, v):
    return d * (v - np.float32(8.0))


@njit(inline="always")
def _q4_0_block(d, m, t, xs):
    return d * (t - np.float32(8.0) * xs)                   # the "- 8" of every code


@njit(inline="always")
def _q4_1_weight(d, m, v):
    return d * v + m


@njit(inline="always")
def _q4_1_block(d, m, t, xs):
    return d * t + m * xs                                   # the minimum times the block's sum


@njit(inline="always")
def _scaled_weight(d, m, v):
    """q8_0, mxfp4: the code's value times the block's scale."""
    return d * v


@njit(inline="always")
def _scaled_block(d, m, t, xs):
    return d * t


# ----------------------------------------------------------------------------------------------
# The GEMVs. Arguments, the same for every format (layout: packed.py; W = G*nb):
#   x (R, I)       float32   activations; each kernel first copies them into kernel order,
#                            repeated G times (xr[r, j, g*nb + b] = x[r, b*32 + j]) to line up with
#                            a group's bytes, with the sum of x over each block (xs) the same way
#   d, m           float32   (E, OG, W) scales and (q4_1) minimums
#   qs             (E, OG, J, W) the value bytes
#   G              int       rows per group
#   experts (R,)   int64     which matrix of the stack row r multiplies (all 0 for one matrix)
#   out (R, O)     float32   written
# ----------------------------------------------------------------------------------------------

def _ungroup(a, G, nb, O):
    """(E, OG, [J,] G*nb) -> (E, O, [J,] nb): one row per output row, as the twins read it."""
    if a.ndim == 4:
        E, OG, J, _ = a.shape
        return a.reshape(E, OG, J, G, nb).transpose(0, 1, 3, 2, 4).reshape(E, OG * G, J, nb)[:, :O]
    return a.reshape(a.shape[0], -1, nb)[:, :O]


def _nibbles(qs):
    """uint8 (..., 16, nb) -> codes (..., 32, nb): low nibbles are values 0..15, high 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-2)


# The twins' `values`: a format's bytes (..., J, nb) -> (..., 32, nb) float32, what each weight is
# before its block's scale (and, q4_1, minimum): W[o, b*32 + j] = d[o, b] * values[o, j, b] (+ m[o, b]).

def _q4_0_values(q):
    return _nibbles(q).astype(np.float32) - 8


def _q4_1_values(q):
    return _nibbles(q).astype(np.float32)


def _q8_0_values(q):
    return q.astype(np.float32)


def _mxfp4_values(q):
    return MXFP4_LUT2[_nibbles(q)]


def _gemv_numpy(values, x, d, m, qs, G, experts, out):
    """Shared by the twins: each row r's matrix as float32 `values(bytes)` in kernel order, then
    W[o, b*32 + j] = d[o, b] * values[o, j, b] (+ m[o, b]) and y = W @ x."""
    R, O = out.shape
    nb = x.shape[1] // BLOCK
    xk = x.reshape(R, nb, BLOCK).transpose(0, 2, 1)               # (R, 32, nb) kernel order
    v = values(_ungroup(qs[experts], G, nb, O))                     # (R, O, J, nb) -> (R, O, 32, nb)
    w = _ungroup(d[experts], G, nb, O)[:, :, None, :] * v          # (R, O, 1, nb) * (R, O, 32, nb)
    if m.size:
        w = w + _ungroup(m[experts], G, nb, O)[:, :, None, :]
    out[:] = np.einsum("rojb,rjb->ro", w, xk)                       # sum over the 32*nb inputs


def gemv_q4_0_numpy(x, d, m, qs, G, experts, out):
    """y[r, o] = sum_i W[experts[r], o, i] x[r, i] with W = d * (q - 8)."""
    _gemv_numpy(_q4_0_values, x, d, m, qs, G, experts, out)


def gemv_q4_1_numpy(x, d, m, qs, G, experts, out):
    """W = d * q + m."""
    _gemv_numpy(_q4_1_values, x, d, m, qs, G, experts, out)


def gemv_q8_0_numpy(x, d, m, qs, G, experts, out):
    """W = d * q, q int8."""
    _gemv_numpy(_q8_0_values, x, d, m, qs, G, experts, out)


def gemv_mxfp4_numpy(x, d, m, qs, G, experts, out):
    """W = d * LUT2[q]: d = 2^(e-128), LUT2 = 2 * E2M1."""
    _gemv_numpy(_mxfp4_values, x, d, m, qs, G, experts, out)


@njit(inline="always")
def _gemv(x, d, m, qs, G, experts, out, dots, code, block):
    """The skeleton of every packed GEMV: out[r] = W[experts[r]] @ x[r], a group of G output rows
    at a time. `dots` sums each block's values (`code` of its codes) times x into t, and `block`
    makes the block's share of y from t: y[o] = sum_b block(d[o, b], m[o, b], t[b], xs[b])."""
    R, O = out.shape
    xr, xs = _operands(x, G)                                # serial, before the parallel loop
    mins = m if m.size else d               # q4_1's minimums; the others have none (m is empty) and read none
    OG, W = qs.shape[1], qs.shape[3]
    nb = W // G
    per_item = max(1, CHUNK // G)                           # groups per parallel work item
    n_items = (OG + per_item - 1) // per_item
    for item in prange(R * n_items):                        # (row of x, a few groups of rows)
        r, c = item // n_items, item % n_items
        e = experts[r]
        t = np.empty(W, np.float32)                         # one partial sum per block of the group
        for og in range(c * per_item, min(OG, c * per_item + per_item)):
            dots(t, xr[r], qs[e, og], code)                 # t[b] = sum_j v_j x_j
            for g in range(min(G, O - og * G)):
                acc = np.float32(0.0)
                for b in range(g * nb, g * nb + nb):
                    acc += block(d[e, og, b], mins[e, og, b], t[b], xs[r, b])
                out[r, og * G + g] = acc


@njit(inline="always")
def _dots_nibbles(t, x, q, code):
    """t (W,) = for each block of a group, sum_j code(q_j) x_j, two codes to a byte: x (32, W) the
    activations in kernel order, q (16, W) the group's bytes."""
    t[:] = 0.0
    for j in range(16):
        for i in range(q.shape[1]):                         # SIMD over the group's blocks
            c = np.uint32(q[j, i])
            lo = code(np.uint32(c & np.uint32(0x0F)))      # value j of the block
            hi = code(np.uint32(c >> np.uint32(4)))        # value 16 + j
            t[i] += x[j, i] * lo + x[16 + j, i] * hi


@njit(inline="always")
def _dots_bytes(t, x, q, code):
    """The same with one code to a byte: q (32, W)."""
    t[:] = 0.0
    for j in range(0, 32, 4):                               # four bytes per pass: less traffic to t
        for i in range(q.shape[1]):
            t[i] += (x[j, i] * code(q[j, i]) + x[j + 1, i] * code(q[j + 1, i])
                     + x[j + 2, i] * code(q[j + 2, i])
                     + x[j + 3, i] * code(q[j + 3, i]))


@twin(gemv_q4_0_numpy)
@njit(parallel=True, fastmath=_FAST, cache=True)
def gemv_q4_0(x, d, m, qs, G, experts, out):
    _gemv(x, d, m, qs, G, experts, out, _dots_nibbles, np.float32, _q4_0_block)


@twin(gemv_q4_1_numpy)
@njit(parallel=True, fastmath=_FAST, cache=True)
def gemv_q4_1(x, d, m, qs, G, experts, out):
    _gemv(x, d, m, qs, G, experts, out, _dots_nibbles, np.float32, _q4_1_block)


@twin(gemv_q8_0_numpy)
@njit(parallel=True, fastmath=_FAST, cache=True)
def gemv_q8_0(x, d, m, qs, G, experts, out):
    _gemv(x, d, m, qs, G, experts, out, _dots_bytes, np.float32, _scaled_block)


@twin(gemv_mxfp4_numpy)
@njit(parallel=True, fastmath=_FAST, cache=True)
def gemv_mxfp4(x, d, m, qs, G, experts, out):
    _gemv(x, d, m, qs, G, experts, out, _dots_nibbles, e2m1x2, _scaled_block)


# The activations in the GEMVs' order: x (R, I) -> xr (R, 32, G*nb), xs (R, G*nb).

@njit(cache=True)
def _operands(x, G):
    """xr[r, j, g*nb + b] = x[r, b*32 + j] for every g < G; xs[r, g*nb + b] = sum_j x[r, b*32 + j]."""
    R, I = x.shape
    nb = I // 32
    xr = np.empty((R, 32, G * nb), np.float32)
    xs = np.empty((R, G * nb), np.float32)
    for r in range(R):
        for b in range(nb):
            s = np.float32(0.0)
            for j in range(32):
                v = x[r, b * 32 + j]
                s += v
                for g in range(G):
                    xr[r, j, g * nb + b] = v
            for g in range(G):
                xs[r, g * nb + b] = s
    return xr, xs


# ----------------------------------------------------------------------------------------------
# Dequantize rows o0 = og0*G ... o0+T-1 of matrix e (T a multiple of G; rows past O come out 0)
# into a float32 tile (T, 32*nb) in kernel order: tile[t, j*nb + b] = W[e, o0 + t, b*32 + j].
# The prefill path multiplies tiles with BLAS; `dequantize` below puts a matrix back in order.
# ----------------------------------------------------------------------------------------------

def _tile_rows(a, G, e, og0, T):
    """The T rows og0*G .. of matrix e from d, m (-> (T, nb)) or qs (-> (T, J, nb)), ungrouped."""
    nb = a.shape[-1] // G
    return _ungroup(a[e:e + 1, og0:og0 + T // G], G, nb, T)[0]


def _tile_numpy(values, d, m, qs, G, e, og0, out):
    """Shared by the twins: out (T, 32*nb) = d * values(bytes) (+ m), row by row."""
    T = out.shape[0]
    v = values(_tile_rows(qs, G, e, og0, T))                        # (T, J, nb) -> (T, 32, nb)
    w = _tile_rows(d, G, e, og0, T)[:, None, :] * v                 # (T, 1, nb) * (T, 32, nb)
    if m.size:
        w = w + _tile_rows(m, G, e, og0, T)[:, None, :]
    out[:] = w.reshape(T, -1)


def dequant_tile_q4_0_numpy(d, m, qs, G, e, og0, out):
    """out (T, 32*nb) = rows og0*G.. of W[e], q4_0: d * (q - 8)."""
    _tile_numpy(_q4_0_values, d, m, qs, G, e, og0, out)


def dequant_tile_q4_1_numpy(d, m, qs, G, e, og0, out):
    _tile_numpy(_q4_1_values, d, m, qs, G, e, og0, out)


def dequant_tile_q8_0_numpy(d, m, qs, G, e, og0, out):
    _tile_numpy(_q8_0_values, d, m, qs, G, e, og0, out)


def dequant_tile_mxfp4_numpy(d, m, qs, G, e, og0, out):
    _tile_numpy(_mxfp4_values, d, m, qs, G, e, og0, out)


@njit(inline="always")
def _dequant_tile(d, m, qs, G, e, og0, out, row, code, weight):
    """The skeleton of every tile kernel: one output row t at a time, with views of that row's
    scales s and minimums mn (nb,), from which `row` makes out[t] with `code` and `weight`. Row t's
    bytes are those of blocks k = g*nb .. k+nb-1 in group og of matrix e."""
    T, W = out.shape[0], qs.shape[3]
    nb = W // G
    mins = m if m.size else d               # q4_1's minimums; the others have none (m is empty) and read none
    for t in range(T):
        og, g = og0 + t // G, t % G
        s, mn = d[e, og, g * nb:g * nb + nb], mins[e, og, g * nb:g * nb + nb]   # (nb,), (nb,)
        row(out[t], s, mn, qs, e, og, g * nb, nb, code, weight)


# The row decoders run plain 1-D loops over views of the row's bytes q (nb,), one for each j, which
# LLVM turns into SIMD code (indexing the 4-D arrays inside the loop measured 3-6x slower). They
# take the view qs[e, og, j, k:k+nb], and nb from the skeleton, as the per-format kernels did: with
# a view of the whole group's bytes and nb read from a view's length instead, q4_1's tiles of
# mixtral-mini's 1408 x 512 experts (16-block loops) measured 1.2-1.4x slower, with the same loop
# bodies (what changed was the loops' setup).

@njit(inline="always")
def _row_nibbles(o, s, mn, qs, e, og, k, nb, code, weight):
    """o (32*nb,) = one row in kernel order, two codes to a byte: its bytes are qs[e, og, :, k:k+nb]."""
    for j in range(16):
        q = qs[e, og, j, k:k + nb]                                   # (nb,) byte j of each block
        for b in range(nb):
            c = np.uint32(q[b])
            o[j * nb + b] = weight(s[b], mn[b], code(np.uint32(c & np.uint32(0x0F))))          # value j
            o[(16 + j) * nb + b] = weight(s[b], mn[b], code(np.uint32(c >> np.uint32(4))))     # value 16 + j


@njit(inline="always")
def _row_bytes(o, s, mn, qs, e, og, k, nb, code, weight):
    """The same with one code to a byte (qs[e, og] is (32, W))."""
    for j in range(32):
        q = qs[e, og, j, k:k + nb]
        for b in range(nb):
            o[j * nb + b] = weight(s[b], mn[b], code(q[b]))


@twin(dequant_tile_q4_0_numpy)
@njit(cache=True, nogil=True, fastmath=_FAST)
def dequant_tile_q4_0(d, m, qs, G, e, og0, out):
    _dequant_tile(d, m, qs, G, e, og0, out, _row_nibbles, np.float32, _q4_0_weight)


@twin(dequant_tile_q4_1_numpy)
@njit(cache=True, nogil=True, fastmath=_FAST)
def dequant_tile_q4_1(d, m, qs, G, e, og0, out):
    _dequant_tile(d, m, qs, G, e, og0, out, _row_nibbles, np.float32, _q4_1_weight)


@twin(dequant_tile_q8_0_numpy)
@njit(cache=True, nogil=True, fastmath=_FAST)
def dequant_tile_q8_0(d, m, qs, G, e, og0, out):
    _dequant_tile(d, m, qs, G, e, og0, out, _row_bytes, np.float32, _scaled_weight)


@twin(dequant_tile_mxfp4_numpy)
@njit(cache=True, nogil=True, fastmath=_FAST)
def dequant_tile_mxfp4(d, m, qs, G, e, og0, out):
    _dequant_tile(d, m, qs, G, e, og0, out, _row_nibbles, e2m1x2, _scaled_weight)


# ----------------------------------------------------------------------------------------------
# The float32 GEMV, for the decode step of an unquantized model: out[r] = W[experts[r]] @ x[r].
# A float GEMV is memory-bound (4 bytes per weight, 2 flops), and OpenBLAS streams the bytes
# faster: on a quiet machine, mixtral-mini's float32 decode ran 74-84 tokens/s through BLAS
# against 48-57 through gemv_f32 (alternating, one run). But OpenBLAS's threads spin while they
# wait for work; with another program busy on one of the 2 cores it fell to 27-30 against
# gemv_f32's 41. So fmatmul uses BLAS unless FLOAT_GEMV is "numba" ($MINIMOE_FLOAT_GEMV=numba),
# and gemv_f32 stays, with its twin, for reading and for loaded machines.
# ----------------------------------------------------------------------------------------------

FLOAT_GEMV = os.environ.get("MINIMOE_FLOAT_GEMV", "blas")      # "blas" or "numba"

def gemv_f32_numpy(x, w, experts, out):
    """x (R, I), w (E, O, I) float32 -> out (R, O)."""
    out[:] = np.einsum("roi,ri->ro", w[experts], x)                # (R, O, I) . (R, I) -> (R, O)


@twin(gemv_f32_numpy)
@njit(parallel=True, fastmath=_FAST, cache=True)
def gemv_f32(x, w, experts, out):
    R, O = out.shape
    I = x.shape[1]
    n_items = (O + CHUNK - 1) // CHUNK
    for item in prange(R * n_items):
        r, c = item // n_items, item % n_items
        e = experts[r]
        for o in range(c * CHUNK, min(O, c * CHUNK + CHUNK)):
            acc = np.float32(0.0)
            for i in range(I):                                     # SIMD dot product
                acc += w[e, o, i] * x[r, i]
            out[r, o] = acc


def fmatmul(x: np.ndarray, w: np.ndarray, experts: np.ndarray | None = None) -> np.ndarray:
    """x (R, I) float32 @ w.T for a float32 w (O, I), or row r times w[experts[r]] for a stack
    (E, O, I). Few rows (decode) run gemv_f32; more rows go to BLAS."""
    stacked = w.ndim == 3
    what = f"matmul with a float weight of shape {w.shape}"
    _check_x(x, w.shape[-1], what)
    if w.dtype != np.float32 or w.ndim not in (2, 3) or not w.flags.c_contiguous:
        raise KernelInputError(f"{what}: w must be a C-contiguous float32 (O, I) or (E, O, I) array, "
                               f"found {w.dtype} with {w.ndim} axes")
    R = x.shape[0]
    experts = check_experts(experts, R, w.shape[0], stacked, what)
    if FLOAT_GEMV not in ("blas", "numba"):
        raise KernelInputError(f"minimoe.kernels.qmatmul.FLOAT_GEMV ($MINIMOE_FLOAT_GEMV) must be 'blas' or "
                               f"'numba', found {FLOAT_GEMV!r}")
    if R > GEMV_MAX_ROWS or FLOAT_GEMV == "blas":
        if not stacked:
            return x @ w.T                                         # (R, I) @ (I, O) -> (R, O), BLAS
        out = np.empty((R, w.shape[1]), np.float32)
        for r in range(R):
            np.matmul(w[experts[r]], x[r], out=out[r])             # (O, I) @ (I,) -> (O,)
        return out
    out = np.empty((R, w.shape[-2]), np.float32)
    kernel = gemv_f32 if all_cores(R * out.shape[1] * x.shape[1], PARALLEL_MIN_FLOAT_WEIGHTS) else gemv_f32.serial
    kernel(np.ascontiguousarray(x), w if stacked else w[None], experts if stacked else _NO_EXPERT[:R], out)
    return out


# Every GEMV also exists compiled for one core (`k.serial`: the same source, prange runs as range).
# Starting a parallel loop costs ~10 microseconds on an idle machine (Numba's OpenMP pool, told not
# to spin: backend.configure_numba), and a scheduler time slice when another program holds a core.
# A GEMV over fewer than PARALLEL_MIN_WEIGHTS weights (a tiny model's) runs on one core; bigger
# ones use all cores: measured 1.7-1.9x faster on 2 cores for 1.4 M weights, 0.9x for 0.4 M alone,
# yet mixtral-mini's whole decode step ran 3-5% faster with its 0.26-0.4 M attention GEMVs parallel
# too (the weights stream from memory there, not from cache as in the one-matrix measurement).

def all_cores(weights: int, threshold: int | None = None) -> bool:
    """Whether a GEMV touching `weights` weights runs on all cores: big enough (PARALLEL_MIN_WEIGHTS,
    or `threshold`), and parallel loops allowed in this process (backend.parallel_ok)."""
    return weights >= (PARALLEL_MIN_WEIGHTS if threshold is None else threshold) and parallel_ok()


def _one_core(kernel):
    """Attach kernel.serial: the kernel's Python source compiled without threads."""
    fn = getattr(kernel.numba, "py_func", kernel.numba)   # a plain function under NUMBA_DISABLE_JIT=1
    clone = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__,
                               fn.__closure__)
    clone.__qualname__ = fn.__qualname__ + "_serial"      # its own entry in Numba's on-disk cache
    kernel.serial = Kernel(njit(fastmath=_FAST, cache=True)(clone), kernel.numpy)
    return kernel


for _k in (gemv_q4_0, gemv_q4_1, gemv_q8_0, gemv_mxfp4, gemv_f32):
    _one_core(_k)

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


def int8_activations() -> bool:
    """Whether the decode GEMVs round x to int8 (minimoe.set_activation_precision): "int8", or
    "auto" on a CPU with an integer dot-product instruction (kernels/vnni.py)."""
    precision = get_activation_precision()
    if precision == "auto":
        from minimoe.kernels.vnni import has_int8_dot
        return has_int8_dot()
    return precision == "int8"


def block_sums(xk: np.ndarray) -> np.ndarray:
    """xk (R, 32, nb) -> xs (R, nb): the sum of x over each block."""
    return xk.sum(axis=1)


def qmatmul(x: np.ndarray, w: PackedWeight, experts: np.ndarray | None = None) -> np.ndarray:
    """x (..., I) float32 @ W.T for a packed W (O, I) -> (..., O) float32.

    With a stack W (E, O, I), `experts` (R,) says which matrix each of the R rows of x uses
    (the decode path of an MoE layer): x (R, I) -> (R, O)."""
    if not isinstance(w, PackedWeight):
        raise KernelInputError(f"qmatmul: w must be a PackedWeight (minimoe.kernels.pack(qtensor)), "
                               f"found {type(w).__name__}")
    w.validate()                                                      # the kernels trust its arrays
    I = w.shape[-1]
    what = f"matmul with a packed {w.fmt} weight of shape {w.shape}"
    _check_x(x, I, what)
    lead = x.shape[:-1]
    X = x.reshape(-1, I)                                              # (R, I)
    R = X.shape[0]
    E, O = w.d.shape[0], w.rows
    experts = check_experts(experts, R, E, w.stacked, what)
    out = np.empty((R, O), np.float32)
    if R == 0:
        return out.reshape(*lead, O)
    if experts is not None and R > GEMV_MAX_ROWS:                     # many rows, several experts:
        for e in np.unique(experts):                                  # one matrix at a time
            rows = np.flatnonzero(experts == e)
            out[rows] = qmatmul(X[rows], w[int(e)])
        return out.reshape(*lead, O)
    if R <= GEMV_MAX_ROWS:                                            # decode: GEMV over the bytes
        ex = _NO_EXPERT[:R] if experts is None else experts
        parallel = all_cores(R * O * I)
        if int8_activations():                                        # x rounded to int8 (int8matmul.py)
            from minimoe.kernels.int8matmul import imatmul_into
            imatmul_into(np.ascontiguousarray(X), w, ex, out, parallel)
            return out.reshape(*lead, O)
        kernel = GEMV[w.fmt] if parallel else GEMV[w.fmt].serial
        kernel(np.ascontiguousarray(X), w.d, w.m, w.qs, w.G, ex, out)
        return out.reshape(*lead, O)
    if R <= INT8_GEMM_MAX_ROWS and int8_activations():                 # a few rows: integer kernel
        from minimoe.kernels.int8matmul import imatmul_rows
        imatmul_rows(np.ascontiguousarray(X), w, 0, out, parallel_ok())
        return out.reshape(*lead, O)
    return _prefill(to_kernel_order(X).reshape(R, -1), w, 0, out).reshape(*lead, O)


_buffers = threading.local()
_pools: dict = {}          # workers -> the ThreadPoolExecutor the prefill path reuses


def _pool(workers: int) -> ThreadPoolExecutor:
    """A thread pool of `workers` threads, made once and reused: starting threads for each of the
    ~200 matmuls of a prefill cost more than some of the products."""
    if workers not in _pools:
        _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="minimoe-prefill")
    return _pools[workers]


os.register_at_fork(after_in_child=_pools.clear)   # a forked child has none of the parent's threads


def _tile_buffer(n: int) -> np.ndarray:
    """A float32 scratch buffer of at least n values, one per thread, reused across calls (a new
    megabyte each time would cost a page fault per 4 KiB), starting on a 64-byte boundary (a cache
    line: dequantizing into a misaligned tile measured up to 2x slower)."""
    buf = getattr(_buffers, "tile", None)
    if buf is None or buf.size < n:
        raw = np.empty(n + 16, np.float32)
        skip = (-raw.__array_interface__["data"][0] % 64) // 4   # floats to the next 64-byte boundary
        buf = _buffers.tile = raw[skip:skip + n]
    return buf


def _prefill(xk: np.ndarray, w: PackedWeight, e: int, out: np.ndarray) -> np.ndarray:
    """out (R, O) = xk (R, I, kernel order) @ W[e].T, a tile of rows at a time: dequantize the tile
    into a float32 buffer that stays in cache, multiply it with BLAS. Every core gets as many tiles
    (3 tiles on 2 cores left one idle a third of the time: 1.4x slower at 64 rows). The tiles are shared out to
    one worker thread per core (the dequantizing kernel releases the GIL, and so does BLAS), each
    calling a one-thread BLAS: no thread pool has to wake up and wait for every tile."""
    R, I = xk.shape
    O = out.shape[1]
    cores = min(os.cpu_count() or 1, numba.get_num_threads())
    step = max(16, TILE_VALUES // I // 16 * 16)                       # rows per tile, a multiple of every G
    n = -(-O // step)                                                 # tiles of at most that many rows,
    n = -(-n // cores) * cores                                        # as many for every core:
    step = -(-O // n)                                                 # ceil(O / n) rows each,
    step = -(-step // 16) * 16                                        # up to a multiple of 16
    rows_padded = w.d.shape[1] * w.G                                  # whole groups (padding rows are 0)
    dequant = DEQUANT_TILE[w.fmt]

    def tile_product(o0: int) -> None:
        T = min(step, rows_padded - o0)
        tile = _tile_buffer(step * I)[:T * I].reshape(T, I)           # (T, I), this thread's buffer
        dequant(w.d, w.m, w.qs, w.G, e, o0 // w.G, tile)
        valid = min(T, O - o0)
        out[:, o0:o0 + valid] = xk @ tile[:valid].T                   # (R, I) @ (I, T) -> (R, T)

    starts = range(0, O, step)
    workers = min(len(starts), cores)
    if workers <= 1:
        for o0 in starts:
            tile_product(o0)
        return out
    with blas_threads(1):
        list(_pool(workers).map(tile_product, starts))
    return out


def float_matmul(x: np.ndarray, w: np.ndarray, experts: np.ndarray | None = None) -> np.ndarray:
    """x (R, I) float32 @ w.T for a float32 w (O, I), or row r times w[experts[r]] of a stack
    (E, O, I): a prefill's products, shared out to one worker thread per core, each calling a
    one-thread BLAS (as `_prefill` does for packed weights): by column blocks for one matrix, by
    expert for a stack. No thread spins waiting for another, so when another program holds a
    core the product takes at most about twice its time, where OpenBLAS's own spinning threads
    made it 3-100x (docs/kernels.md)."""
    R, O = x.shape[0], w.shape[-2]
    out = np.empty((R, O), x.dtype)
    workers = min(os.cpu_count() or 1, numba.get_num_threads())
    if experts is None:
        step = -(-O // workers)
        jobs = [(slice(None), o0, None) for o0 in range(0, O, step)]
    else:
        jobs = [(np.flatnonzero(experts == e), 0, e) for e in np.unique(experts)]

    def product(job) -> None:
        rows, o0, e = job
        if e is None:
            out[:, o0:o0 + step] = x @ w[o0:o0 + step].T                 # (R, I) @ (I, step)
        else:
            out[rows] = x[rows] @ w[e].T                                  # (n_e, I) @ (I, O)

    with blas_threads(1):
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                product(job)
        else:
            list(_pool(workers).map(product, jobs))
    return out


def dequantize(w: PackedWeight) -> np.ndarray:
    """A packed matrix (O, I) or stack (E, O, I) back to float32 in the original order."""
    E, OG, W = w.d.shape
    nb, O = W // w.G, w.rows
    out = np.empty((E, OG * w.G, 32 * nb), np.float32)
    for e in range(E):
        DEQUANT_TILE[w.fmt](w.d, w.m, w.qs, w.G, e, 0, out[e])        # (OG*G, 32*nb) kernel order
    natural = out[:, :O].reshape(E, O, BLOCK, nb).transpose(0, 1, 3, 2).reshape(E, O, 32 * nb)
    return np.ascontiguousarray(natural.reshape(w.shape))
