"""Q3_K: 3-bit codes in super-blocks of 256 with a 6-bit signed scale per 16 (GGUF / ggml type 11;
the bulk of Q3_K_S/M/L files). Shared pieces: k_quants.py.

One super-block = 256 weights in 110 bytes = 3.4375 bits per weight:

    byte   0              32                       96              108       110
         +------ ... ----+--------- ... ----------+----- ... -----+---------+
         | hmask[32]     | qs[64]: low 2 bits     | scales[12]    | d: fp16 |
         +------ ... ----+--------- ... ----------+----- ... -----+---------+

    value v = 128n + 32r + l  (n = 0, 1 halves; r = 0..3 rows; l = 0..31), sub-block v // 16:
        low 2 bits    (qs[32n + l] >> 2r) & 3
        high bit      bit (4n + r) of hmask[l]      (set: +0, clear: -4; ggml's "strange" offset)
    16 scales of 6 bits, stored plus 32 (0..63 means -32..31):
        bytes 0..7    low nibble: low 4 bits of scale j (j < 8); high nibble: of scale j + 8
        bytes 8..11   byte 8 + j % 4, bits 2 (j // 4) .. +1: the high 2 bits of scale j

Decode:   x = (d * (sc[v // 16] - 32)) * (low2 - (0 if high bit else 4))       codes -4..3

Encode (ggml quantize_row_q3_K_ref):
    1. each sub-block of 16: make_q3_quants (below): codes -4..3 and a float scale, fitted by
       least squares with weights x^2, improving one code at a time (5 passes)
    2. the super-block: the scale with the largest |scale| is max_scale; iscale = -32 / max_scale;
       d = fp16(1 / iscale); stored scale j = clamp(round(iscale * scale_j), -32, 31) + 32
    3. codes again with the stored scales: clamp(round(x / (d * (sc - 32))), -4, 3)
       (a sub-block whose d * (sc - 32) is 0 keeps step 1's codes)

Shapes: N super-blocks; BLOCK_SIZE = 256 values, BLOCK_BYTES = 110 bytes per block.
"""
from __future__ import annotations

import numpy as np

from .k_quants import GROUP_MAX_EPS, QK_K, nearest_int
from .qtensor import as_byte_blocks, as_float_blocks, fp16_from_bytes, fp16_to_bytes

NAME = "q3_k"
BLOCK_SIZE = QK_K                                   # 256
BLOCK_BYTES = QK_K // 8 + QK_K // 4 + 12 + 2        # hmask, qs, scales, d = 110

F32 = np.float32
_HBIT = (1 << np.arange(8, dtype=np.uint8))[None, :, None]   # (1, 8, 1): bit 4n + r for row 4n + r


def make_q3_quants(x: np.ndarray, nmax: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """ggml make_q3_quants(n, nmax, x, L, do_rmse=true) on M sub-blocks at once.
    x (M, n) float32 -> (scale (M,), L (M, n) codes + nmax, or 0 for an all-zero sub-block)."""
    x = x.astype(F32)
    M, n = x.shape
    i_max = np.abs(x).argmax(axis=1)
    signed_max = x[np.arange(M), i_max]                           # (M,) first largest |x|, its sign
    zero = np.abs(signed_max) < GROUP_MAX_EPS
    iscale = F32(-nmax) / np.where(zero, F32(1), signed_max)      # (M,)
    L = np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1)   # (M, n) ints
    w = x * x
    Lf = L.astype(F32)
    sumlx = np.add.accumulate(w * x * Lf, axis=1, dtype=F32)[:, -1]   # sequential, as in C
    suml2 = np.add.accumulate(w * Lf * Lf, axis=1, dtype=F32)[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(5):                                        # a pass that changes nothing ends ggml's loop;
            for i in range(n):                                    # repeating it changes nothing either
                wi, xi, li = w[:, i], x[:, i], L[:, i].astype(F32)
                slx = sumlx - wi * xi * li
                sl2 = suml2 - wi * li * li
                new_l = np.clip(nearest_int(np.where(slx > 0, xi * sl2 / slx, F32(0))), -nmax, nmax - 1)
                nf = new_l.astype(F32)
                slx2 = slx + wi * xi * nf
                sl22 = sl2 + wi * nf * nf
                take = (slx > 0) & (new_l != L[:, i]) & (sl22 > 0) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
                L[:, i] = np.where(take, new_l, L[:, i])
                sumlx = np.where(take, slx2, sumlx)
                suml2 = np.where(take, sl22, suml2)
        scale = (sumlx / suml2).astype(F32)
    L = np.where(zero[:, None], 0, L + nmax).astype(np.uint8)
    return np.where(zero, F32(0), scale).astype(F32), L


def pack_scales(sc: np.ndarray) -> np.ndarray:
    """uint8 (N, 16) stored scales 0..63 -> (N, 12) (diagram above)."""
    out = np.zeros((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:8] = (sc[:, 0:8] & 0x0F) | ((sc[:, 8:16] & 0x0F) << 4)
    high = (sc >> 4).reshape(-1, 4, 4)                            # (N, j // 4, j % 4)
    out[:, 8:12] = high[:, 0] | (high[:, 1] << 2) | (high[:, 2] << 4) | (high[:, 3] << 6)
    return out


def unpack_scales(b: np.ndarray) -> np.ndarray:
    """(N, 12) -> stored scales (N, 16), 0..63 (subtract 32 for the signed scale)."""
    low = np.concatenate([b[:, 0:8] & 0x0F, b[:, 0:8] >> 4], axis=1)              # (N, 16)
    shifts = (2 * (np.arange(16) // 4)).astype(np.uint8)                            # j // 4
    high = (b[:, 8 + np.arange(16) % 4] >> shifts) & 3                              # (N, 16)
    return low | (high << 4)


def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """float32 (N, 256) -> uint8 (N, 110), following ggml quantize_row_q3_K_ref."""
    x = as_float_blocks(x, NAME, BLOCK_SIZE)
    n = x.shape[0]
    scale, L = make_q3_quants(x.reshape(n * 16, 16))
    scale, L = scale.reshape(n, 16), L.reshape(n, 16, 16)
    i_max = np.abs(scale).argmax(axis=1)
    max_scale = scale[np.arange(n), i_max]                        # (N,)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(-32) / np.where(max_scale == 0, F32(1), max_scale)
        stored = np.clip(nearest_int(iscale[:, None] * scale), -32, 31) + 32          # (N, 16) 0..63
        stored = np.where((max_scale == 0)[:, None], 0, stored).astype(np.uint8)      # memset 0
        d = np.where(max_scale == 0, F32(0), F32(1) / iscale).astype(np.float16).astype(F32)
        ds = d[:, None] * (stored.astype(np.int32) - 32).astype(F32)                 # (N, 16)
        l = nearest_int(x.reshape(n, 16, 16) / np.where(ds == 0, F32(1), ds)[:, :, None])
    q = np.where((ds == 0)[:, :, None], L, np.clip(l, -4, 3) + 4).reshape(n, QK_K)   # (N, 256) 0..7
    rows = q.reshape(n, 8, 32)                                    # (N, 4n + r, l)
    hmask = np.bitwise_or.reduce(((rows >> 2) & 1) * _HBIT, axis=1).astype(np.uint8)   # (N, 32)
    low = (rows & 3).reshape(n, 2, 4, 32)                         # (N, half, r, l)
    qs = (low[:, :, 0] | (low[:, :, 1] << 2) | (low[:, :, 2] << 4) | (low[:, :, 3] << 6)).reshape(n, 64)
    return np.concatenate([hmask, qs.astype(np.uint8), pack_scales(stored), fp16_to_bytes(d, NAME)], axis=1)


def dequantize_blocks(b: np.ndarray) -> np.ndarray:
    """uint8 (N, 110) -> float32 (N, 256), the same float bits as gguf."""
    b = as_byte_blocks(b, NAME, BLOCK_BYTES)
    hmask, qs = b[:, 0:32], b[:, 32:96]
    sc = unpack_scales(b[:, 96:108]).astype(np.int8) - np.int8(32)                  # (N, 16) -32..31
    d = fp16_from_bytes(b[:, 108:110])                                               # (N,)
    low = (qs.reshape(-1, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3   # (N, 2, 4, 32)
    high = (hmask[:, None, :] & _HBIT) != 0                                          # (N, 8, 32)
    q = low.reshape(-1, 8, 32).astype(np.int8) - np.where(high, 0, 4).astype(np.int8)  # (N, 8, 32) -4..3
    ds = (d[:, None] * sc.astype(F32)).reshape(-1, 16, 1)                            # (N, 16, 1)
    return (ds * q.reshape(-1, 16, 16).astype(F32)).reshape(-1, QK_K)


def dequantize_block_loop(block) -> np.ndarray:
    """The readable oracle: decode ONE 110-byte block with plain loops (ggml dequantize_row_q3_K)."""
    block = bytes(block)
    assert len(block) == BLOCK_BYTES, f"a q3_k block is {BLOCK_BYTES} bytes, got {len(block)}"
    hmask, qs, sb = block[0:32], block[32:96], block[96:108]
    d = np.frombuffer(block[108:110], dtype="<f2")[0].astype(np.float32)
    out = np.zeros(BLOCK_SIZE, dtype=np.float32)
    for v in range(BLOCK_SIZE):
        n, r, l = v // 128, (v % 128) // 32, v % 32
        j = v // 16                                                  # the sub-block's scale
        low4 = (sb[j] & 0x0F) if j < 8 else (sb[j - 8] >> 4)
        stored = low4 | (((sb[8 + j % 4] >> (2 * (j // 4))) & 3) << 4)
        q = ((qs[32 * n + l] >> (2 * r)) & 3) - (0 if hmask[l] & (1 << (4 * n + r)) else 4)
        out[v] = d * np.float32(stored - 32) * np.float32(q)
    return out
