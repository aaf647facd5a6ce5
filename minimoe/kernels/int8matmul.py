"""Int8 activations: the decode GEMV of a packed weight done in integers, as llama.cpp does it.

Shape legend: R rows of activations, E stacked matrices (experts), O output rows, I input width,
nb = I/32 blocks per row, G rows per group, OG groups, W = G*nb blocks per group, Wp = W rounded
up to LANES (16), KQ 32-bit words of weight bytes per block (4 for the 4-bit formats, 8 for q8_0).

Why quantize the activations? The float kernels of qmatmul.py turn every 4-bit code into a float32
and do a float multiply-add with it: about 10 G weights/s per core, slower than the memory can
deliver the bytes. llama.cpp instead rounds the activations to int8 too, once per call, and then
multiplies bytes by bytes with an integer dot-product instruction (vnni.py: 64 multiply-adds per
instruction, against 16 for a float32 FMA). The weights are used as the small integers they are.

The recipe, per row of x and block b of 32 values (llama.cpp's ggml_vec_dot_{q4_0,q8_0,mxfp4}_q8_0
and ggml_vec_dot_q4_1_q8_1, with quantize_row_q8_0_ref / quantize_row_q8_1_ref):

  1. activations to Q8_0:  dx_b = amax_b / 127,  qx_j = round(x_j / dx_b)  (int8, -127..127;
     round half away from zero; the division is x_j * (1 / dx_b) in float32), and dx_b is kept
     as fp16, as in the GGUF block. q4_1 also takes sx_b = fp16(dx_b * sum_j qx_j) (ggml's Q8_1).
  2. per block, an integer dot product of the weight's codes and qx:  isum_b = sum_j v_j qx_j,
     exact in int32.
  3. y = sum_b dw_b dx_b isum_b                 (q4_0, q8_0, mxfp4; dw_b the weight's scale)
     y = sum_b dw_b dx_b isum_b + mw_b sx_b     (q4_1; mw_b the block's minimum)

The instruction multiplies an UNSIGNED byte by a signed one, so each format's codes are first made
non-negative, u = v + OFFSET, and the offset is taken back from the integer sum:
isum_b = sum_j u_j qx_j - OFFSET * sum_j qx_j (both exact):

            v (the weight's integer)   u = v + OFFSET         OFFSET
    q4_0    q - 8                      q (the nibble)          8
    q4_1    q                          q                       0
    q8_0    q (int8)                   q + 128 (byte ^ 0x80)   128   (done once, when repacking)
    mxfp4   2 * E2M1[q] (-12..12)      v + 12                  12    (computed per call, SWAR)

The numerical contract (tests/test_kernels_int8.py):
  * the integers (qx, isum) equal the NumPy twin's and ggml's bit for bit;
  * y equals ggml's vec_dot on the same bytes to float32 rounding (the order of the float sum
    over blocks differs);
  * against the float path (qmatmul.py, x kept in float32), y differs by the rounding of x to
    int8: relative to sum_i |w_i x_i| about 2^-8 per value at worst, usually much less; a model's
    logits move by under 1% of their spread (measured in the tests and docs/kernels.md).

The layout: "quad order". Each 32-bit word holds 4 bytes of ONE block, so that a word's 4 products
sum into that block's lane. From packed.py's layout qs (E, OG, J, W), made once per weight:

    qw   uint32 (E, OG, KQ, Wp)   qw[e, og, k, blk] = bytes 4k .. 4k+3 of block blk (byte 4k lowest)

For the 4-bit formats, word k's low nibbles are values 4k..4k+3 of the block and its high nibbles
values 16+4k..16+4k+3. The activations are made the same way on every call:

    xw   int32 (R, 8, Wp)         xw[r, k, g*nb + b] = qx[r, b*32 + 4k .. b*32 + 4k+3], for every g < G

so for nibbles, weight word k pairs with xw[k] (low) and xw[k + 4] (high); for q8_0 word k with
xw[k]. A block's integer sum then collects in one 32-bit lane: 8 dot4 calls per 16 blocks.
Padding blocks W..Wp are zero.
"""
from __future__ import annotations

import math
import types
import weakref

import numpy as np
from numba import njit, prange

from minimoe.kernels import vnni
from minimoe.kernels.backend import Kernel, configure_numba
from minimoe.kernels.packed import BLOCK, PackedWeight, _root
from minimoe.kernels.qmatmul import _FAST, CHUNK, MXFP4_LUT2, _nibbles, _ungroup
from minimoe.kernels.vnni import LANES

configure_numba()

OFFSET = {"q4_0": 8, "q4_1": 0, "q8_0": 128, "mxfp4": 12}


# ----------------------------------------------------------------------------------------------
# 1. Activations to Q8_0 (ggml's quantize_row_q8_0_ref and, for s, quantize_row_q8_1_ref)
# ----------------------------------------------------------------------------------------------

def fp16_round(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest fp16 (ties to even; past 65504, inf), back as float32."""
    with np.errstate(over="ignore"):
        return a.astype(np.float16).astype(np.float32)


def round_half_away(t: np.ndarray) -> np.ndarray:
    """C's roundf: to the nearest integer, halves away from zero (np.round sends them to even)."""
    r = np.trunc(t)
    return np.where(np.abs(t - r) >= 0.5, r + np.sign(t), r)


def quantize_q8_0_numpy(x, qx, dx, sx):
    """x (R, I) float32 -> qx (R, I) int8, dx (R, nb) the fp16 scales (as float32), sx (R, nb)
    fp16(dx * sum qx) with the unrounded dx (Q8_1's s, for q4_1). Written into the arrays given."""
    R, I = x.shape
    xb = x.reshape(R, I // BLOCK, BLOCK)                                  # (R, nb, 32)
    d = np.abs(xb).max(axis=2) / np.float32(127)                          # (R, nb) float32
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = round_half_away(xb * inv[:, :, None]).astype(np.int8)            # (R, nb, 32)
    qx[:] = q.reshape(R, I)
    dx[:] = fp16_round(d)
    sx[:] = fp16_round(q.sum(axis=2, dtype=np.int32).astype(np.float32) * d)


@njit(inline="always")
def _fp16(v):
    """A float32 rounded to the nearest fp16 value (ties to even), in float64 arithmetic (exact)."""
    if v == 0.0 or not math.isfinite(v):
        return np.float32(v)
    a = abs(np.float64(v))
    _, e = math.frexp(a)                                  # a = m 2^e, 0.5 <= m < 1
    quantum = math.ldexp(1.0, max(e - 11, -24))           # 11 significant bits; subnormals: 2^-24
    t = a / quantum
    f = math.floor(t)
    if t - f > 0.5 or (t - f == 0.5 and f % 2 == 1):
        f += 1.0
    r = f * quantum
    if r > 65504.0:
        r = math.inf
    return np.float32(r if v > 0 else -r)


@njit(cache=True)
def _quantize_rows(x, qx, dx, sx):
    """The Numba side of quantize_q8_0_numpy (compiled without fastmath: the rounding must be exact)."""
    R, I = x.shape
    for r in range(R):
        for b in range(I // 32):
            amax = np.float32(0.0)
            for j in range(32):
                amax = max(amax, abs(x[r, b * 32 + j]))
            d = amax / np.float32(127.0)
            inv = np.float32(1.0) / d if d != 0 else np.float32(0.0)
            s = 0
            for j in range(32):
                t = x[r, b * 32 + j] * inv                 # float32 product, as ggml's x * id
                q = np.trunc(t)
                if abs(t - q) >= 0.5:
                    q += 1.0 if t > 0 else -1.0
                qx[r, b * 32 + j] = np.int8(q)
                s += np.int32(q)
            dx[r, b] = _fp16(d)
            sx[r, b] = _fp16(np.float32(s) * d)


@njit(cache=True)
def quantize_q8_0_numba(x, qx, dx, sx):
    _quantize_rows(x, qx, dx, sx)


quantize_q8_0 = Kernel(quantize_q8_0_numba, quantize_q8_0_numpy)


# The activations in quad order, for the kernels: the Q8_0 values as words, repeated G times.

@njit(cache=True)
def _operands(x, G, Wp, offset):
    """x (R, I) -> xw (R, 8, Wp) int32 words, xoff (R, Wp) int32 = offset * sum_j qx_j, dx, sx (R, Wp)."""
    R, I = x.shape
    nb = I // 32
    words = np.empty((R, nb * 8), np.int32)               # qx, 4 to a word
    dxb, sxb = np.empty((R, nb), np.float32), np.empty((R, nb), np.float32)
    qx = words.view(np.int8)                              # (R, I)
    _quantize_rows(x, qx, dxb, sxb)
    xw = np.zeros((R, 8, Wp), np.int32)
    xoff = np.zeros((R, Wp), np.int32)
    dx, sx = np.zeros((R, Wp), np.float32), np.zeros((R, Wp), np.float32)
    for r in range(R):
        for b in range(nb):
            s = np.int32(0)
            for j in range(32):
                s += np.int32(qx[r, b * 32 + j])
            for g in range(G):
                for k in range(8):
                    xw[r, k, g * nb + b] = words[r, b * 8 + k]
                xoff[r, g * nb + b] = s * offset
                dx[r, g * nb + b] = dxb[r, b]
                sx[r, g * nb + b] = sxb[r, b]
    return xw, xoff, dx, sx


# ----------------------------------------------------------------------------------------------
# 2. Weight codes as unsigned bytes: words(u, qw) -> (8, Wp) uint32, whose row k holds the codes
#    u = v + OFFSET that pair with xw[k], for every block of a group (qw (KQ, Wp) its words; u
#    (8, Wp) scratch). Whole rows at a time: long plain loops, which LLVM turns into SIMD code.
# ----------------------------------------------------------------------------------------------

@njit(inline="always")
def _nibble_words(u, qw):
    """q4_0, q4_1: the nibbles themselves (0..15): low nibbles pair with xw[k], high with xw[k+4]."""
    for k in range(4):
        q, lo, hi = qw[k], u[k], u[k + 4]                         # (Wp,) each
        for i in range(q.size):
            lo[i] = q[i] & np.uint32(0x0F0F0F0F)
            hi[i] = (q[i] >> np.uint32(4)) & np.uint32(0x0F0F0F0F)
    return u


@njit(inline="always")
def _byte_words(u, qw):
    """q8_0: the bytes as they are (repacked as q + 128), nothing to do."""
    return qw


@njit(inline="always")
def _e2m1_plus_12(c):
    """Four 4-bit MXFP4 codes, one per byte of c, -> 12 + 2*E2M1 of each (0..24), with word-wide
    bit operations ("SWAR"). For the magnitude bits a = c & 7, 2*E2M1 is a + max(a-4, 0) +
    2*max(a-6, 0) (0 1 2 3 4 6 8 12); a - 4 = a & 3 when bit 2 is set, a - 6 = 1 only for 7.
    No byte ever carries into the next, so four bytes go at once."""
    ones = np.uint32(0x01010101)
    a = c & np.uint32(0x07070707)
    bit2 = (c >> np.uint32(2)) & ones
    mag = (a + ((a & np.uint32(0x03030303)) & (bit2 * np.uint32(0xFF)))
           + ((c & (c >> np.uint32(1)) & bit2) << np.uint32(1)))          # 0..12 per byte
    neg = ((c >> np.uint32(3)) & ones) * np.uint32(0xFF)                  # 0xFF where the sign is set
    twelve = np.uint32(0x0C0C0C0C)
    return ((twelve + mag) & ~neg) | ((twelve - mag) & neg)


@njit(inline="always")
def _mxfp4_words(u, qw):
    """mxfp4: 12 + 2*E2M1[code] (0..24) of the low and the high nibbles."""
    for k in range(4):
        q, lo, hi = qw[k], u[k], u[k + 4]
        for i in range(q.size):
            lo[i] = _e2m1_plus_12(q[i] & np.uint32(0x0F0F0F0F))
            hi[i] = _e2m1_plus_12((q[i] >> np.uint32(4)) & np.uint32(0x0F0F0F0F))
    return u


@njit(inline="always")
def _group_isums(acc, xw, qw, u, words, dot4):
    """acc (Wp,) int32 = for each block of a group, sum_j u_j qx_j: xw (8, Wp) the row's
    activation words, qw (KQ, Wp) the group's weight words, u (8, Wp) scratch."""
    _code_isums(acc, xw, words(u, qw), dot4)                  # words: (8, Wp) the codes of every block


@njit(inline="always")
def _code_isums(acc, xw, c, dot4):
    """acc (Wp,) int32 = sum_j u_j qx_j per block, from the codes c (8, Wp) already unpacked."""
    acc[:] = 0
    for l in range(0, acc.size, LANES):
        for k in range(8):
            dot4(acc, l, c[k], l, xw[k], l)                   # acc[l:l+16] += dot4(c[k, l:], xw[k, l:])


# ----------------------------------------------------------------------------------------------
# 3. The GEMVs. Same arguments as qmatmul.py's, with the weight bytes in quad order:
#   x (R, I) float32, d, m (E, OG, W) float32, qw (E, OG, KQ, Wp) uint32, G, experts (R,) int64,
#   out (R, O) float32 (written).
# ----------------------------------------------------------------------------------------------

@njit(inline="always")
def _plain_block(dw, mw, dx, sx, isum):
    return dw * dx * np.float32(isum)


@njit(inline="always")
def _q4_1_block(dw, mw, dx, sx, isum):
    return dw * dx * np.float32(isum) + mw * sx                  # the minimum times sum_j x_j


ITEMS_PER_ROW = 8          # a row of x times one weight is split into at most this many work items


@njit(inline="always")
def _n_items(OG, G):
    """Work items for OG groups of G rows: runs of at least CHUNK rows, at most ITEMS_PER_ROW runs."""
    return min(ITEMS_PER_ROW, (OG + max(1, CHUNK // G) - 1) // max(1, CHUNK // G))


@njit(inline="always")
def _igemv(x, ds, ms, qws, G, experts, outs, words, offset, block, dot4):
    """The skeleton of every int8 GEMV: for each weight i of the tuple qws (all of one format and
    input width, all reading the same x), outs[i][r] = W_i[experts[r]] @ x[r], a group of G rows
    at a time: the integer sums of a group (dot4), then each row's float sum over its blocks.
    x is rounded to int8 once for all of them, and one parallel loop covers every weight's rows:
    q, k and v of an attention layer, or an MoE layer's gate and up, in one region."""
    R = x.shape[0]
    Wp = qws[0].shape[3]
    W = ds[0].shape[2]
    nb = W // G
    xw, xoff, dx, sx = _operands(x, G, Wp, offset)            # serial, before the parallel loop
    # work items: each row of x times at most ITEMS_PER_ROW runs of groups of each weight (few,
    # so that the scratch arrays below are made a few dozen times per call, not once per group)
    n_w = len(qws)
    first = np.zeros(n_w + 1, np.int64)                       # weight i owns items first[i] .. first[i+1]-1
    for i in range(n_w):
        first[i + 1] = first[i] + R * _n_items(qws[i].shape[1], G)
    for item in prange(first[n_w]):
        i = 0
        while item >= first[i + 1]:
            i += 1
        d, qw, out = ds[i], qws[i], outs[i]
        mins = ms[i] if ms[i].size else d
        OG, O = qw.shape[1], out.shape[1]
        n_items = _n_items(OG, G)
        per_item = (OG + n_items - 1) // n_items
        r, c = (item - first[i]) // n_items, (item - first[i]) % n_items
        e = experts[r]
        acc = np.empty(Wp, np.int32)
        u = np.empty((8, Wp), np.uint32)
        t = np.empty(W, np.float32)
        for og in range(c * per_item, min(OG, c * per_item + per_item)):
            _group_isums(acc, xw[r], qw[e, og], u, words, dot4)
            _group_rows(out, r, og, G, nb, acc, t, xoff[r], d[e, og], mins[e, og], dx[r], sx[r], block)


@njit(inline="always")
def _group_rows(out, r, og, G, nb, acc, t, xoff, dw, mw, dx, sx, block):
    """From a group's block sums acc (W,) for row r of x: each block's share of y, t (W,), then
    each of the group's rows' sum over its nb blocks, into out[r, og*G + g]."""
    for b in range(t.size):
        acc[b] -= xoff[b]                                     # isum = sum_j u_j qx_j - OFFSET sum_j qx_j
        t[b] = block(dw[b], mw[b], dx[b], sx[b], acc[b])
    for g in range(min(G, out.shape[1] - og * G)):
        y = np.float32(0.0)
        for b in range(g * nb, g * nb + nb):
            y += t[b]
        out[r, og * G + g] = y


@njit(inline="always")
def _igemm(x, d, m, qw, G, e, out, words, offset, block, dot4):
    """Many rows of x (a prefill's) times matrix e of a stack: out (R, O) = x @ W[e].T. The same
    sums as _igemv, with the loops turned round: each group's codes are unpacked once and used for
    every row of x, and the parallel loop runs over groups of output rows."""
    R, O = out.shape
    OG, Wp = qw.shape[1], qw.shape[3]
    W = d.shape[2]
    nb = W // G
    xw, xoff, dx, sx = _operands(x, G, Wp, offset)            # x to int8, once
    mins = m if m.size else d
    per_item = max(1, CHUNK // G)
    for c in prange((OG + per_item - 1) // per_item):
        acc = np.empty(Wp, np.int32)
        u = np.empty((8, Wp), np.uint32)
        t = np.empty(W, np.float32)
        for og in range(c * per_item, min(OG, c * per_item + per_item)):
            codes = words(u, qw[e, og])                       # (8, Wp), for every row below
            for r in range(R):
                _code_isums(acc, xw[r], codes, dot4)
                _group_rows(out, r, og, G, nb, acc, t, xoff[r], d[e, og], mins[e, og], dx[r], sx[r], block)


# The compiled kernels. Each is one of the three skeletons above with a format's pieces (how its
# codes become bytes, its OFFSET, its block formula) and a dot4. `variant` below compiles one
# function per (kind, format, dot4, threads), each with its own entry in Numba's on-disk cache, by
# filling these globals in: WORDS, OFFSET, BLOCK_SUM (from PIECES) and DOT4 (vnni.dot4_vnni512,
# ..._vnni256, ..._sdot or ..._portable).
PIECES = {"q4_0": (_nibble_words, 8, _plain_block), "q4_1": (_nibble_words, 0, _q4_1_block),
          "q8_0": (_byte_words, 128, _plain_block), "mxfp4": (_mxfp4_words, 12, _plain_block)}
WORDS, OFFSET, BLOCK_SUM, DOT4 = _nibble_words, 8, _plain_block, vnni.dot4_portable


def igemv(x, d, m, qw, G, experts, out):
    """A decode GEMV: out[r] = W[experts[r]] @ x[r] (qmatmul.py's arguments, qw in quad order)."""
    _igemv(x, (d,), (m,), (qw,), G, experts, (out,), WORDS, OFFSET, BLOCK_SUM, DOT4)


def igemv_many(x, ds, ms, qws, G, experts, outs):
    """The same for several weights that read the same x, in one call (tuples, one entry each)."""
    _igemv(x, ds, ms, qws, G, experts, outs, WORDS, OFFSET, BLOCK_SUM, DOT4)


def igemm(x, d, m, qw, G, e, out):
    """A prefill's rows times matrix e: out = x @ W[e].T, codes unpacked once per group."""
    _igemm(x, d, m, qw, G, e, out, WORDS, OFFSET, BLOCK_SUM, DOT4)


def block_isums(x, qw, G, experts, fmt, out):
    """For the tests: out (R, OG, Wp) int32 = every block's isum = sum_j v_j qx_j, the integers
    the GEMVs scale. fmt: 0 q4_0, 1 q4_1, 2 q8_0, 3 mxfp4."""
    R = x.shape[0]
    OG, Wp = qw.shape[1], qw.shape[3]
    off = (8, 0, 128, 12)[fmt]
    xw, xoff, dx, sx = _operands(x, G, Wp, off)
    acc = np.empty(Wp, np.int32)
    u = np.empty((8, Wp), np.uint32)
    for r in range(R):
        for og in range(OG):
            if fmt == 2:
                _group_isums(acc, xw[r], qw[experts[r], og], u, _byte_words, DOT4)
            elif fmt == 3:
                _group_isums(acc, xw[r], qw[experts[r], og], u, _mxfp4_words, DOT4)
            else:
                _group_isums(acc, xw[r], qw[experts[r], og], u, _nibble_words, DOT4)
            for b in range(Wp):
                out[r, og, b] = acc[b] - xoff[r, b]


# ----------------------------------------------------------------------------------------------
# The twins: the same integers with NumPy, from the bytes in packed.py's order
# ----------------------------------------------------------------------------------------------

def quad_bytes(qw: np.ndarray, W: int) -> np.ndarray:
    """qw (E, OG, KQ, Wp) uint32 -> the bytes (E, OG, 4*KQ, W) uint8 in packed.py's order."""
    E, OG, KQ, Wp = qw.shape
    b = qw.view(np.uint8).reshape(E, OG, KQ, Wp, 4)[:, :, :, :W]       # byte 4k+t of each block
    return b.transpose(0, 1, 2, 4, 3).reshape(E, OG, 4 * KQ, W)


def _codes_q4_0(b):
    return _nibbles(b).astype(np.int32) - 8                             # (..., 32, nb)


def _codes_q4_1(b):
    return _nibbles(b).astype(np.int32)


def _codes_q8_0(b):
    return (b ^ 0x80).view(np.int8).astype(np.int32)                    # undo the + 128


def _codes_mxfp4(b):
    return MXFP4_LUT2[_nibbles(b)].astype(np.int32)                     # 2 * E2M1, -12..12


CODES = {"q4_0": _codes_q4_0, "q4_1": _codes_q4_1, "q8_0": _codes_q8_0, "mxfp4": _codes_mxfp4}


def isums_numpy(codes, x, qw, G, experts, O):
    """isum (R, O, nb) int32 = sum_j v_j qx_j per block, and qx's dx, sx (R, nb): steps 1 and 2."""
    R, I = x.shape
    nb = I // BLOCK
    qx = np.empty((R, I), np.int8)
    dx, sx = np.empty((R, nb), np.float32), np.empty((R, nb), np.float32)
    quantize_q8_0_numpy(x, qx, dx, sx)                                   # step 1
    qk = qx.reshape(R, nb, BLOCK).transpose(0, 2, 1).astype(np.int32)    # (R, 32, nb)
    v = codes(_ungroup(quad_bytes(qw, G * nb)[experts], G, nb, O))       # (R, O, 32, nb) the v_j
    return np.einsum("rojb,rjb->rob", v, qk), dx, sx                     # step 2: (R, O, nb)


def _igemv_numpy(fmt, x, d, m, qw, G, experts, out):
    R, O = out.shape
    nb = x.shape[1] // BLOCK
    isum, dx, sx = isums_numpy(CODES[fmt], x, qw, G, experts, O)        # (R, O, nb), (R, nb)
    dw = _ungroup(d[experts], G, nb, O)                                  # (R, O, nb)
    y = dw * dx[:, None, :] * isum.astype(np.float32)                    # step 3, per block
    if m.size:
        y = y + _ungroup(m[experts], G, nb, O) * sx[:, None, :]          # + mw sx (q4_1)
    out[:] = y.sum(axis=2)                                               # (R, O)


def igemv_q4_0_numpy(x, d, m, qw, G, experts, out):
    """out[r] = W[experts[r]] @ x[r] in integers: y = sum_b dw dx sum_j (q_j - 8) qx_j."""
    _igemv_numpy("q4_0", x, d, m, qw, G, experts, out)


def igemv_q4_1_numpy(x, d, m, qw, G, experts, out):
    """y = sum_b dw dx sum_j q_j qx_j + mw sx."""
    _igemv_numpy("q4_1", x, d, m, qw, G, experts, out)


def igemv_q8_0_numpy(x, d, m, qw, G, experts, out):
    """y = sum_b dw dx sum_j q_j qx_j."""
    _igemv_numpy("q8_0", x, d, m, qw, G, experts, out)


def igemv_mxfp4_numpy(x, d, m, qw, G, experts, out):
    """y = sum_b dw dx sum_j 2 E2M1[q_j] qx_j (dw the halved E8M0 scale)."""
    _igemv_numpy("mxfp4", x, d, m, qw, G, experts, out)


def igemm_numpy(fmt: str):
    """The twin of igemm_<fmt>: igemv_<fmt>'s twin with every row on matrix e."""
    def gemm(x, d, m, qw, G, e, out):
        _igemv_numpy(fmt, x, d, m, qw, G, np.full(x.shape[0], e, np.int64), out)
    gemm.__name__ = f"igemm_{fmt}_numpy"
    return gemm


def igemv_many_numpy(fmt: str):
    """The twin of igemv_many_<fmt>: each weight of the tuples in turn, through igemv_<fmt>'s twin."""
    def many(x, ds, ms, qws, G, experts, outs):
        for d, m, qw, out in zip(ds, ms, qws, outs):
            _igemv_numpy(fmt, x, d, m, qw, G, experts, out)
    many.__name__ = f"igemv_many_{fmt}_numpy"
    return many


def block_isums_numpy(x, qw, G, experts, fmt, out):
    """out (R, OG, Wp) int32: isums_numpy's (R, O, nb) in the kernels' group order (padding 0)."""
    R = x.shape[0]
    nb = x.shape[1] // BLOCK
    name = ("q4_0", "q4_1", "q8_0", "mxfp4")[fmt]
    OG, Wp = qw.shape[1], qw.shape[3]
    isum, _, _ = isums_numpy(CODES[name], x, qw, G, experts, OG * G)     # (R, OG*G, nb)
    out[:] = 0
    out[:, :, :G * nb] = isum.reshape(R, OG, G * nb)


# ----------------------------------------------------------------------------------------------
# The compiled variants: one per format, dot4 (vnni512, vnni256, portable) and threads
# ----------------------------------------------------------------------------------------------

# kind -> (skeleton function, twin for a format); the formats' own twins are above
KINDS = {"": (igemv, lambda fmt: TWINS_GEMV[fmt]), "many_": (igemv_many, igemv_many_numpy),
         "gemm_": (igemm, igemm_numpy)}
TWINS_GEMV = {"q4_0": igemv_q4_0_numpy, "q4_1": igemv_q4_1_numpy, "q8_0": igemv_q8_0_numpy,
              "mxfp4": igemv_mxfp4_numpy}
_variants: dict = {}


def variant(name: str, dot: str | None = None, parallel: bool = True) -> Kernel:
    """The Kernel for `name`: a format ("q4_0": the GEMV), "many_" + a format (several weights),
    "gemm_" + a format (a prefill's rows) or "block_isums" (for the tests), compiled with dot4
    `dot` (default: what this CPU runs, vnni.int8_dot()), on all cores or one: the skeleton's
    source with the globals WORDS, OFFSET, BLOCK_SUM and DOT4 filled in, under its own name (its own
    entry in Numba's on-disk cache)."""
    dot = dot or vnni.int8_dot()
    parallel = parallel and name != "block_isums"
    key = (name, dot, parallel)
    if key not in _variants:
        if name == "block_isums":
            fn, twin_fn, pieces, label = block_isums, block_isums_numpy, PIECES["q4_0"], "block_isums"
        else:
            kind = next((k for k in ("many_", "gemm_") if name.startswith(k)), "")
            fmt = name[len(kind):]
            fn, twin_of = KINDS[kind]
            twin_fn, pieces, label = twin_of(fmt), PIECES[fmt], f"{fn.__name__}_{fmt}"
        words, offset, block = pieces
        scope = dict(fn.__globals__, WORDS=words, OFFSET=offset, BLOCK_SUM=block, DOT4=vnni.DOT4[dot])
        suffix = f"_{dot}" + ("" if parallel else "_serial")
        clone = types.FunctionType(fn.__code__, scope, label + suffix, fn.__defaults__, fn.__closure__)
        clone.__qualname__ = label + suffix
        _variants[key] = Kernel(njit(parallel=parallel, fastmath=_FAST, cache=True)(clone), twin_fn)
    return _variants[key]


# ----------------------------------------------------------------------------------------------
# The weight in quad order, made once per PackedWeight (cached while its bytes live)
# ----------------------------------------------------------------------------------------------

_quads: dict = {}


def quad_words(w: PackedWeight) -> np.ndarray:
    """qw (E, OG, KQ, Wp) uint32: w.qs regrouped 4 bytes of a block to a word (q8_0's bytes + 128).
    Made once per stack: matrix e of a stack (PackedWeight.__getitem__, a view of the stack's qs,
    as a prefill takes one expert at a time) gets a view of the stack's words."""
    mine = w.__dict__.get("_quad_words")               # made for this very PackedWeight before
    if mine is not None and mine[0] is w.qs:
        return mine[1]
    qs, root = w.qs, _root(w.qs)
    per = qs[0].nbytes if len(qs) else 0                                # bytes of one matrix's qs
    offset = qs.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    if not (per and root.itemsize == qs.itemsize and root.flags.c_contiguous and qs.flags.c_contiguous
            and root.nbytes % per == 0 and offset % per == 0):
        root, offset = qs, 0                                            # not a slice of a stack
    whole = _quads.get(id(root))
    if whole is None or whole[0]() is not root:
        whole = (weakref.ref(root), _regroup(root.view(qs.dtype).reshape(-1, *qs.shape[1:]), w.fmt))
        key = id(root)
        _quads[key] = whole
        weakref.finalize(root, _quads.pop, key, None)                   # forget it with the bytes
    e = offset // per if per else 0
    qw = whole[1][e:e + len(qs)]
    w.__dict__["_quad_words"] = (qs, qw)                   # a decode step asks ~60 times a token
    return qw


def _regroup(qs: np.ndarray, fmt: str) -> np.ndarray:
    """qs (E, OG, J, W) in packed.py's order -> qw (E, OG, J/4, Wp) uint32 in quad order."""
    E, OG, J, W = qs.shape
    Wp = -(-W // LANES) * LANES
    b = np.zeros((E, OG, J, Wp), np.uint8)
    b[..., :W] = qs.view(np.uint8)
    if fmt == "q8_0":
        b[..., :W] ^= 0x80                                              # u = q + 128
    qw = np.ascontiguousarray(b.reshape(E, OG, J // 4, 4, Wp).transpose(0, 1, 2, 4, 3)).view(np.uint32)
    return qw.reshape(E, OG, J // 4, Wp)


def _kernel(name: str, parallel: bool) -> Kernel:
    """The compiled variant for this CPU's dot4: a dictionary lookup once it exists."""
    return _variants.get((name, vnni.int8_dot(), parallel)) or variant(name, parallel=parallel)


def imatmul_into(x: np.ndarray, w: PackedWeight, experts: np.ndarray, out: np.ndarray, parallel: bool) -> None:
    """out (R, O) = x (R, I) @ W[experts[r]].T through the int8 path (arguments checked by qmatmul)."""
    _kernel(w.fmt, parallel)(x, w.d, w.m, quad_words(w), w.G, experts, out)


def imatmul_rows(x: np.ndarray, w: PackedWeight, e: int, out: np.ndarray, parallel: bool = True) -> None:
    """out (R, O) = x (R, I) @ W[e].T for a prefill's many rows (checked by qmatmul)."""
    _kernel("gemm_" + w.fmt, parallel)(x, w.d, w.m, quad_words(w), w.G, e, out)


def imatmul_many(x: np.ndarray, ws: list, experts: np.ndarray, parallel: bool) -> list:
    """[x (R, I) @ W[experts[r]].T for W in ws]: packed weights of one format and input width,
    all multiplied in one kernel call (one rounding of x, one parallel loop). Checked by the caller
    (kernels.matmul_many_leaf)."""
    outs = tuple(np.empty((x.shape[0], w.rows), np.float32) for w in ws)
    _kernel("many_" + ws[0].fmt, parallel)(x, tuple(w.d for w in ws), tuple(w.m for w in ws), tuple(quad_words(w) for w in ws),
           ws[0].G, experts, outs)
    return list(outs)
