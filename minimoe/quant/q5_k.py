"""Q5_K: 5-bit codes in super-blocks of 256 with 6-bit scales and mins per 32 (GGUF / ggml type 13).
It is Q4_K plus one high bit per weight. Shared pieces: k_quants.py; the 4 low bits: q4_k.py.

One super-block = 256 weights in 176 bytes = 5.5 bits per weight:

    byte   0         2          4               16            48                    176
         +---------+----------+---------------+-------------+------------ ... -----+
         | d: fp16 | dmin:fp16| scales[12]    | qh[32]      | qs[128]: low 4 bits  |
         +---------+----------+---------------+-------------+------------ ... -----+
                                8 x (sc, m)     high bits     the same order as q4_k

    qh[l], l = 0..31: bit k is the high (fifth) bit of element l of sub-block k (k = 0..7)
         bit  7    6    5    4    3    2    1    0
            +----+----+----+----+----+----+----+----+
            | s7 | s6 | s5 | s4 | s3 | s2 | s1 | s0 |      sk = bit 4 of q[32k + l]
            +----+----+----+----+----+----+----+----+

Decode (sub-block j = 0..7 of 32 values, q = low | high << 4 in 0..31):

    x = (d * sc[j]) * q - (dmin * m[j])

Encode (ggml quantize_row_q5_K_ref): as q4_k with nmax 31 and the search make_qkx2_quants(rmin
-0.5, rdelta 0.1, 15 steps).

Shapes: N super-blocks; BLOCK_SIZE = 256 values, BLOCK_BYTES = 176 bytes per block.
"""
from __future__ import annotations

import numpy as np

from .k_quants import QK_K, dequantize_asymmetric, quantize_asymmetric, scale_min_loop
from .q4_k import pack_codes, unpack_codes
from .qtensor import as_byte_blocks, as_float_blocks

NAME = "q5_k"
BLOCK_SIZE = QK_K                               # 256
BLOCK_BYTES = 2 + 2 + 12 + QK_K // 8 + QK_K // 2   # d, dmin, scales, high bits, low nibbles = 176

_BIT = (1 << np.arange(8, dtype=np.uint8))[None, :, None]   # (1, 8, 1): bit k for sub-block k


def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """float32 (N, 256) -> uint8 (N, 176), following ggml quantize_row_q5_K_ref."""
    x = as_float_blocks(x, NAME, BLOCK_SIZE)
    header, q = quantize_asymmetric(x, 31, -0.5, 0.1, 15)                        # (N, 16), (N, 8, 32)
    qh = np.bitwise_or.reduce((q >> 4) * _BIT, axis=1).astype(np.uint8)          # (N, 8, 32) -> (N, 32)
    return np.concatenate([header, qh, pack_codes((q & 0x0F).reshape(-1, QK_K))], axis=1)   # (N, 176)


def dequantize_blocks(b: np.ndarray) -> np.ndarray:
    """uint8 (N, 176) -> float32 (N, 256), the same float bits as gguf."""
    b = as_byte_blocks(b, NAME, BLOCK_BYTES)
    high = (b[:, None, 16:48] & _BIT) != 0                             # (N, 1, 32) & (1, 8, 1) -> (N, 8, 32)
    low = unpack_codes(b[:, 48:]).reshape(-1, 8, 32)                   # (N, 8, 32)
    return dequantize_asymmetric(b[:, :16], low | (high.astype(np.uint8) << 4))   # codes 0..31


def dequantize_block_loop(block) -> np.ndarray:
    """The readable oracle: decode ONE 176-byte block with plain loops (ggml dequantize_row_q5_K)."""
    block = bytes(block)
    assert len(block) == BLOCK_BYTES, f"a q5_k block is {BLOCK_BYTES} bytes, got {len(block)}"
    d = np.frombuffer(block[0:2], dtype="<f2")[0].astype(np.float32)
    dmin = np.frombuffer(block[2:4], dtype="<f2")[0].astype(np.float32)
    scales, qh, qs = block[4:16], block[16:48], block[48:]
    out = np.zeros(BLOCK_SIZE, dtype=np.float32)
    for c in range(4):                                   # chunk of 64 values = sub-blocks 2c, 2c + 1
        sc1, m1 = scale_min_loop(scales, 2 * c)
        sc2, m2 = scale_min_loop(scales, 2 * c + 1)
        d1, dm1 = d * np.float32(sc1), dmin * np.float32(m1)
        d2, dm2 = d * np.float32(sc2), dmin * np.float32(m2)
        for l in range(32):
            byte = qs[32 * c + l]
            q1 = (byte & 0x0F) + (16 if qh[l] & (1 << (2 * c)) else 0)
            q2 = (byte >> 4) + (16 if qh[l] & (1 << (2 * c + 1)) else 0)
            out[64 * c + l] = d1 * np.float32(q1) - dm1
            out[64 * c + 32 + l] = d2 * np.float32(q2) - dm2
    return out
