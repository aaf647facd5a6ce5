"""Q6_K: 6-bit codes in super-blocks of 256 with an 8-bit scale per 16 (GGUF / ggml type 14; the
output and attention-value weights of a Q4_K_M file). Shared pieces: k_quants.py.

One super-block = 256 weights in 210 bytes = 6.5625 bits per weight:

    byte   0                         128              192               208       210
         +--------- ... ------------+------ ... -----+------ ... ------+---------+
         | ql[128]: low 4 bits      | qh[64]: high 2 | scales[16] int8 | d: fp16 |
         +--------- ... ------------+------ ... -----+------ ... ------+---------+

    The 256 codes are two halves of 128 (h = 0, 1), each four rows of 32, v = 128h + 32r + l:
        ql[64h + l]       = low4(q[128h + l])       | low4(q[128h + 64 + l]) << 4     l = 0..31
        ql[64h + 32 + l]  = low4(q[128h + 32 + l])  | low4(q[128h + 96 + l]) << 4
        qh[32h + l]       = high2(q[128h + l])  | high2(q[128h + 32 + l]) << 2
                          | high2(q[128h + 64 + l]) << 4 | high2(q[128h + 96 + l]) << 6
    and value v uses scales[v // 16].

Decode (q in 0..63):   x = (d * scales[v // 16]) * (q - 32)

Encode (ggml quantize_row_q6_K_ref; the search is k_quants.make_qx_quants):
    1. each sub-block of 16: make_qx_quants(nmax 32) -> a float scale (symmetric, weights x^2)
    2. the super-block: the scale with the largest |scale| is max_scale; iscale = -128 / max_scale;
       d = fp16(1 / iscale); scales[j] = min(127, round(iscale * scale[j]))
       (all |scale| < 1e-15: the whole block is zero bytes)
    3. q = clamp(round(x / (d * scales[j])), -32, 31) + 32   (d * scales[j] == 0: the search's codes)

Shapes: N super-blocks; BLOCK_SIZE = 256 values, BLOCK_BYTES = 210 bytes per block.
"""
from __future__ import annotations

import numpy as np

from .k_quants import GROUP_MAX_EPS, QK_K, make_qx_quants, nearest_int
from .qtensor import as_byte_blocks, as_float_blocks, fp16_from_bytes, fp16_to_bytes

NAME = "q6_k"
BLOCK_SIZE = QK_K                                   # 256
BLOCK_BYTES = QK_K // 2 + QK_K // 4 + QK_K // 16 + 2   # ql, qh, scales, d = 210

F32 = np.float32


def pack_codes(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 codes (N, 256), 0..63 -> (ql (N, 128), qh (N, 64)) (diagram above)."""
    rows = q.reshape(-1, 2, 4, 32)                               # (N, half, row, l)
    low, high = rows & 0x0F, rows >> 4
    ql = np.concatenate([low[:, :, 0] | (low[:, :, 2] << 4),     # (N, 2, 32) rows 0 and 2
                         low[:, :, 1] | (low[:, :, 3] << 4)], axis=2)   # rows 1 and 3 -> (N, 2, 64)
    qh = high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)   # (N, 2, 32)
    return ql.reshape(-1, 128).astype(np.uint8), qh.reshape(-1, 64).astype(np.uint8)


def unpack_codes(ql: np.ndarray, qh: np.ndarray) -> np.ndarray:
    """(ql (N, 128), qh (N, 64)) -> codes (N, 256), 0..63."""
    ql = ql.reshape(-1, 2, 2, 32)                                # (N, half, first/second 32, l)
    qh = qh.reshape(-1, 2, 1, 32)                                # (N, half, 1, l)
    low = np.stack([ql[:, :, 0] & 0x0F, ql[:, :, 1] & 0x0F,      # rows 0, 1, 2, 3 -> (N, 2, 4, 32)
                    ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
    high = (qh >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3   # (N, 2, 4, 32)
    return (low | (high << 4)).reshape(-1, QK_K)


def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """float32 (N, 256) -> uint8 (N, 210), following ggml quantize_row_q6_K_ref."""
    x = as_float_blocks(x, NAME, BLOCK_SIZE)
    n = x.shape[0]
    scale, L = make_qx_quants(x.reshape(n * 16, 16), 32)              # (N*16,), (N*16, 16)
    scale, L = scale.reshape(n, 16), L.reshape(n, 16, 16)
    i_max = np.abs(scale).argmax(axis=1)                               # first largest |scale|
    max_scale = scale[np.arange(n), i_max]                             # (N,)
    empty = np.abs(max_scale) < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(-128) / np.where(empty, F32(1), max_scale)        # (N,)
        d = (F32(1) / iscale).astype(np.float16).astype(F32)           # (N,) fp16
        sc = np.minimum(nearest_int(iscale[:, None] * scale), 127).astype(np.int8)   # (N, 16)
        ds = d[:, None] * sc.astype(F32)                               # (N, 16)
        safe = np.where(ds == 0, F32(1), ds)
        l = nearest_int(x.reshape(n, 16, 16) / safe[:, :, None])       # (N, 16, 16)
    # a sub-block whose stored scale is 0 keeps the search's codes, as in ggml
    q = np.where((ds == 0)[:, :, None], L, np.clip(l, -32, 31) + 32).astype(np.uint8)   # (N, 16, 16)
    ql, qh = pack_codes(q.reshape(n, QK_K))
    out = np.concatenate([ql, qh, sc.view(np.uint8), fp16_to_bytes(d, NAME)], axis=1)   # (N, 210)
    out[empty] = 0                                                     # ggml: memset 0, d = +0
    return out


def dequantize_blocks(b: np.ndarray) -> np.ndarray:
    """uint8 (N, 210) -> float32 (N, 256), the same float bits as gguf."""
    b = as_byte_blocks(b, NAME, BLOCK_BYTES)
    q = unpack_codes(b[:, 0:128], b[:, 128:192]).astype(np.int8) - np.int8(32)   # (N, 256) -32..31
    sc = b[:, 192:208].view(np.int8).astype(F32)                       # (N, 16)
    d = fp16_from_bytes(b[:, 208:210])                                 # (N,)
    ds = (d[:, None] * sc)[:, :, None]                                 # (N, 16, 1)
    return (ds * q.reshape(-1, 16, 16).astype(F32)).reshape(-1, QK_K)  # (N, 256)


def dequantize_block_loop(block) -> np.ndarray:
    """The readable oracle: decode ONE 210-byte block with plain loops (ggml dequantize_row_q6_K)."""
    block = bytes(block)
    assert len(block) == BLOCK_BYTES, f"a q6_k block is {BLOCK_BYTES} bytes, got {len(block)}"
    ql, qh = block[0:128], block[128:192]
    scales = np.frombuffer(block[192:208], dtype=np.int8)
    d = np.frombuffer(block[208:210], dtype="<f2")[0].astype(np.float32)
    out = np.zeros(BLOCK_SIZE, dtype=np.float32)
    for h in range(2):                                   # two halves of 128 values
        for l in range(32):
            q1 = ((ql[64 * h + l] & 0x0F) | (((qh[32 * h + l] >> 0) & 3) << 4)) - 32
            q2 = ((ql[64 * h + 32 + l] & 0x0F) | (((qh[32 * h + l] >> 2) & 3) << 4)) - 32
            q3 = ((ql[64 * h + l] >> 4) | (((qh[32 * h + l] >> 4) & 3) << 4)) - 32
            q4 = ((ql[64 * h + 32 + l] >> 4) | (((qh[32 * h + l] >> 6) & 3) << 4)) - 32
            for r, q in enumerate((q1, q2, q3, q4)):
                v = 128 * h + 32 * r + l
                out[v] = d * np.float32(scales[v // 16]) * np.float32(q)
    return out
