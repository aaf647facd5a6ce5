"""What the K-quants (q4_k, q5_k, q6_k; GGUF / ggml types 12, 13, 14) share: the 256-weight
super-block, the 6-bit sub-block scales of q4_k / q5_k, and ggml's two scale searches.

A K-quant block is a SUPER-BLOCK of QK_K = 256 weights, cut into sub-blocks (8 of 32 for
q4_k / q5_k, 16 of 16 for q6_k). Each sub-block has its own small integer scale; one fp16 number
per super-block turns those integers into floats. Two levels of scales cost fewer bits than one
fp16 scale per 32 weights (q4_0 spends 0.5 bit a weight on scales, q4_k 0.375 on scales and mins).

    q4_k / q5_k:  x = d * sc[j] * q  -  dmin * m[j]       j = sub-block 0..7, sc and m 6-bit (0..63)
    q6_k:         x = d * sc[j] * (q - 32)                 j = sub-block 0..15, sc int8

The 12 bytes of 6-bit (sc, m) pairs of q4_k / q5_k (ggml get_scale_min_k4):

    byte  0..3    bits 0-5: sc[0..3]   bits 6-7: the high 2 bits of sc[4..7]
    byte  4..7    bits 0-5: m[0..3]    bits 6-7: the high 2 bits of m[4..7]
    byte  8..11   bits 0-3: the low 4 bits of sc[4..7]   bits 4-7: the low 4 bits of m[4..7]

Shapes: N super-blocks, S sub-blocks per super-block, n values per sub-block (M = N * S rows).

Encoding follows ggml's quantize_row_q{4,5,6}_K_ref (what `llama-quantize` does without an
importance matrix). Every sum below is a float32 sum taken in ggml's order, left to right
(np.add.accumulate is sequential, np.sum is not), and every product is rounded in float32 as C
does without FMA contraction. A llama.cpp build that lets the compiler fuse a*b+c into one FMA
(-march=native with -ffp-contract=fast, GCC's default) may round a few sums differently and so
pick a different scale in rare blocks; DECODING is exact everywhere.
"""
from __future__ import annotations

import numpy as np

QK_K = 256                      # weights in one super-block
K_SCALE_SIZE = 12               # bytes of packed 6-bit (sc, m) pairs in q4_k / q5_k
GROUP_MAX_EPS = np.float32(1e-15)

F32 = np.float32


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: round half to even in float32 (it adds 1.5 * 2^23), as int32."""
    return np.rint(v.astype(F32)).astype(np.int32)


def running_sum(a: np.ndarray) -> np.ndarray:
    """(M, n) float32 -> (M,): a[:, 0] + a[:, 1] + ... in that order, in float32, as a C loop."""
    return np.add.accumulate(a.astype(F32), axis=1, dtype=F32)[:, -1]


# ----------------------------------------------------------------------------------------
# The 6-bit (sc, m) pairs of q4_k and q5_k
# ----------------------------------------------------------------------------------------

def pack_scale_min(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """uint8 (N, 8) scales and (N, 8) mins, each 0..63 -> uint8 (N, 12) (layout above)."""
    out = np.zeros((sc.shape[0], K_SCALE_SIZE), dtype=np.uint8)
    out[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)          # sc[0..3], top bits of sc[4..7]
    out[:, 4:8] = m[:, 0:4] | ((m[:, 4:8] >> 4) << 6)            # m[0..3], top bits of m[4..7]
    out[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((m[:, 4:8] & 0x0F) << 4)   # low 4 bits of sc[4..7], m[4..7]
    return out


def unpack_scale_min(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 12) -> (sc (N, 8), m (N, 8)), uint8 0..63: the inverse of pack_scale_min."""
    sc = np.empty((b.shape[0], 8), dtype=np.uint8)
    m = np.empty((b.shape[0], 8), dtype=np.uint8)
    sc[:, 0:4] = b[:, 0:4] & 63
    m[:, 0:4] = b[:, 4:8] & 63
    sc[:, 4:8] = (b[:, 8:12] & 0x0F) | ((b[:, 0:4] >> 6) << 4)
    m[:, 4:8] = (b[:, 8:12] >> 4) | ((b[:, 4:8] >> 6) << 4)
    return sc, m


def scale_min_loop(scales: bytes, j: int) -> tuple[int, int]:
    """The readable oracle for one pair: ggml's get_scale_min_k4(j, scales) -> (sc, m)."""
    if j < 4:
        return scales[j] & 63, scales[j + 4] & 63
    return ((scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))


# ----------------------------------------------------------------------------------------
# ggml's searches for one sub-block's scale, on M sub-blocks at once
# ----------------------------------------------------------------------------------------

def make_qkx2_quants(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float,
                     nstep: int, use_mad: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric fit x ~ scale * L - min_ with L in 0..nmax (ggml make_qkx2_quants).

    x, weights (M, n) float32 -> (scale (M,), min_ (M,) >= 0, L (M, n) uint8). It starts from
    the grid spanning [min(x, 0), max x], then tries nstep + 1 stretched grids
    (nmax + rmin + rdelta * is levels) and, for each, the weighted least-squares scale and min
    for those codes; it keeps the fit with the smallest weighted squared error (use_mad: the
    smallest weighted absolute error, as Q2_K asks).
    """
    x, w = x.astype(F32), weights.astype(F32)
    lo = np.minimum(x.min(axis=1), F32(0))                       # (M,) min(x, 0)
    hi = x.max(axis=1)                                           # (M,)
    flat = hi == lo
    span = np.where(flat, F32(1), hi - lo)                       # (M,) avoid 0 / 0 (masked at the end)
    sum_w = running_sum(w)                                       # (M,)
    sum_x = running_sum(w * x)                                   # (M,)

    def codes(iscale, shift):                                    # (M,), (M,) -> (M, n) ints 0..nmax
        return np.clip(nearest_int(iscale[:, None] * (x - shift[:, None])), 0, nmax)

    def error(scale, min_, L):                                   # weighted squared (or absolute) error (M,)
        diff = scale[:, None] * L.astype(F32) + min_[:, None] - x
        return running_sum(w * (np.abs(diff) if use_mad else diff * diff))

    iscale = F32(nmax) / span                                    # (M,)
    scale = F32(1) / iscale
    min_ = lo.copy()
    L = codes(iscale, lo)                                        # (M, n)
    best = error(scale, min_, L)
    with np.errstate(divide="ignore", invalid="ignore"):
        for step in range(nstep + 1):
            # ggml reuses its `min` variable: once a step is taken, the next grids start from
            # that step's min (both the span max - min and the shift x - min)
            span = np.where(flat, F32(1), hi - min_)
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / span
            Laux = codes(iscale, min_)                           # (M, n)
            l = Laux.astype(F32)
            sum_l = running_sum(w * l)
            sum_l2 = running_sum(w * l * l)
            sum_xl = running_sum(w * l * x)
            D = sum_w * sum_l2 - sum_l * sum_l                   # (M,)
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            positive = this_min > 0                              # a min above 0: refit the scale alone
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
            this_min = np.where(positive, F32(0), this_min)
            this_error = error(this_scale, this_min, Laux)
            take = (D > 0) & (this_error < best)
            best = np.where(take, this_error, best)
            L = np.where(take[:, None], Laux, L)
            scale = np.where(take, this_scale, scale)
            min_ = np.where(take, this_min, min_)
    L = np.where(flat[:, None], 0, L).astype(np.uint8)
    scale = np.where(flat, F32(0), scale).astype(F32)
    min_ = np.where(flat, lo, min_)                              # all equal: ggml returns -min(x, 0)
    return scale, (-min_).astype(F32), L


def make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric fit x ~ scale * l, l in -nmax..nmax-1, weights x^2 (ggml make_qx_quants with
    rmse_type 1 and no importance weights). x (M, n) float32 -> (scale (M,) float32,
    L (M, n) uint8 = l + nmax, or all 0 for an all-zero sub-block).

    It starts from the grid that puts the largest |x| on -nmax, then tries 18 stretched grids
    (nmax + 0.1 is levels, is = -9..9 but 0) and keeps the one whose least-squares scale explains
    the most: sumlx^2 / suml2 largest.
    """
    x = x.astype(F32)
    n = x.shape[0]
    i_max = np.abs(x).argmax(axis=1)                             # first index of the largest |x|
    signed_max = x[np.arange(n), i_max]                          # (M,)
    zero = np.abs(signed_max) < GROUP_MAX_EPS
    safe_max = np.where(zero, F32(1), signed_max)
    w = x * x                                                    # (M, n)

    def fit(iscale):                                             # -> codes l, sumlx, suml2
        l = np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1)      # (M, n)
        lf = l.astype(F32)
        return l, running_sum(w * x * lf), running_sum(w * lf * lf)

    with np.errstate(divide="ignore", invalid="ignore"):
        L, sumlx, suml2 = fit(F32(-nmax) / safe_max)
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(F32)
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            l, sumlx, suml2 = fit(-(F32(nmax) + F32(0.1) * F32(step)) / safe_max)
            take = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            L = np.where(take[:, None], l, L)
            scale = np.where(take, sumlx / suml2, scale).astype(F32)
            best = np.where(take, scale * sumlx, best).astype(F32)
    L = np.where(zero[:, None], 0, L + nmax).astype(np.uint8)
    return np.where(zero, F32(0), scale).astype(F32), L


def super_block_scales(scales: np.ndarray, mins: np.ndarray):
    """q4_k / q5_k second level: (N, 8) float sub-block scales and mins -> the fp16 d, dmin
    (as float32 (N,)) and the 6-bit integers sc, m (N, 8) with scales ~ d * sc, mins ~ dmin * m."""
    max_scale = np.maximum(scales.max(axis=1), F32(0))           # (N,) ggml starts the max at 0
    max_min = np.maximum(mins.max(axis=1), F32(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
    sc = np.minimum(nearest_int(inv_scale[:, None] * scales) & 0xFF, 63).astype(np.uint8)   # C: uint8 then MIN(63)
    m = np.minimum(nearest_int(inv_min[:, None] * mins) & 0xFF, 63).astype(np.uint8)
    d = (max_scale / F32(63)).astype(np.float16).astype(F32)    # fp16, round to nearest even
    dmin = (max_min / F32(63)).astype(np.float16).astype(F32)
    return d, dmin, sc, m


def sub_block_weights(x: np.ndarray) -> np.ndarray:
    """q4_k / q5_k error weights: x (M, 32) -> av_x + |x|, av_x = sqrt(mean x^2) (running sum)."""
    av_x = np.sqrt(running_sum(x * x) / F32(32))                 # (M,)
    return av_x[:, None] + np.abs(x)                             # (M, 32)


def requantize_asymmetric(x: np.ndarray, L: np.ndarray, d: np.ndarray, dmin: np.ndarray,
                          sc: np.ndarray, m: np.ndarray, nmax: int) -> np.ndarray:
    """Final codes of q4_k / q5_k with the stored (rounded) scales: l = round((x + dmin m) / (d sc)).
    x (N, 8, 32), L (N, 8, 32) the search's codes (kept where d * sc == 0, as ggml does)."""
    ds = d[:, None] * sc.astype(F32)                             # (N, 8)
    dm = dmin[:, None] * m.astype(F32)                           # (N, 8)
    safe = np.where(ds == 0, F32(1), ds)
    l = np.clip(nearest_int((x + dm[:, :, None]) / safe[:, :, None]), 0, nmax)   # (N, 8, 32)
    return np.where((ds == 0)[:, :, None], L, l).astype(np.uint8)


# ----------------------------------------------------------------------------------------
# The whole two-level encode and decode of q4_k / q5_k (they differ in nmax and search only)
# ----------------------------------------------------------------------------------------

def quantize_asymmetric(x: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """x (N, 256) float32 -> (header (N, 16) bytes: fp16 d, fp16 dmin, 12 scale bytes;
    codes q (N, 8, 32) in 0..nmax), as ggml's quantize_row_q4_K_ref / q5_K_ref compute them."""
    from .qtensor import fp16_to_bytes
    n = x.shape[0]
    sub = x.reshape(n * 8, 32)                                   # (N*8, 32) sub-blocks
    scale, min_, L = make_qkx2_quants(sub, sub_block_weights(sub), nmax, rmin, rdelta, nstep)
    d, dmin, sc, m = super_block_scales(scale.reshape(n, 8), min_.reshape(n, 8))
    q = requantize_asymmetric(x.reshape(n, 8, 32), L.reshape(n, 8, 32), d, dmin, sc, m, nmax)
    fmt = f"q{4 if nmax == 15 else 5}_k"
    header = np.concatenate([fp16_to_bytes(d, fmt), fp16_to_bytes(dmin, fmt, "min"), pack_scale_min(sc, m)],
                            axis=1)                              # (N, 2 + 2 + 12)
    return header, q


def dequantize_asymmetric(header: np.ndarray, q: np.ndarray) -> np.ndarray:
    """header (N, 16) bytes and codes q (N, 8, 32) -> float32 (N, 256):
    x = (d * sc[j]) * q - (dmin * m[j]), in that float32 order (ggml, gguf)."""
    from .qtensor import fp16_from_bytes
    d, dmin = fp16_from_bytes(header[:, 0:2]), fp16_from_bytes(header[:, 2:4])   # (N,), (N,)
    sc, m = unpack_scale_min(header[:, 4:16])                                     # (N, 8), (N, 8)
    ds = (d[:, None] * sc.astype(F32))[:, :, None]                                # (N, 8, 1)
    dm = (dmin[:, None] * m.astype(F32))[:, :, None]                              # (N, 8, 1)
    return (ds * q.astype(F32) - dm).reshape(-1, QK_K)                            # (N, 256)
