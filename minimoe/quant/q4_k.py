"""Q4_K: 4-bit codes in super-blocks of 256 with 6-bit scales and mins per 32 (GGUF / ggml type 12;
the bulk of the Q4_K_M files people download). Shared pieces: k_quants.py.

One super-block = 256 weights in 144 bytes = 4.5 bits per weight:

    byte   0         2          4               16                              144
         +---------+----------+---------------+------------------- ... ---------+
         | d: fp16 | dmin:fp16| scales[12]    | qs[128]: 4-bit codes             |
         +---------+----------+---------------+------------------- ... ---------+
                                8 x (sc, m), 6 bits each (k_quants.py draws the 12 bytes)

    qs holds the 256 codes as 4 chunks of 64 values, 32 bytes each. In chunk c (values
    64c .. 64c + 63), byte qs[32c + l], l = 0..31:
         bit  7   6   5   4   3   2   1   0
            +---------------+---------------+
            | q[64c + 32+l] |  q[64c + l]   |
            +---------------+---------------+
    so sub-block 2c is the low nibbles of chunk c and sub-block 2c + 1 the high nibbles.

Decode (sub-block j = 0..7 of 32 values, q in 0..15):

    x = (d * sc[j]) * q - (dmin * m[j])            float32, in this order (ggml, gguf)

Encode (ggml quantize_row_q4_K_ref; the searches are in k_quants.py):
    1. each sub-block: weights av_x + |x|, then make_qkx2_quants(nmax 15, rmin -1, rdelta 0.1,
       20 steps) -> a float scale and min (x ~ scale * q - min, min >= 0)
    2. the super-block: d = fp16(max scale / 63), dmin = fp16(max min / 63);
       sc[j] = round(63 * scale[j] / max scale), m[j] likewise, clamped to 63
    3. the codes again with the stored scales: q = round((x + dmin m[j]) / (d sc[j])), 0..15
       (a sub-block whose d * sc[j] is 0 keeps step 1's codes)

Shapes: N super-blocks; BLOCK_SIZE = 256 values, BLOCK_BYTES = 144 bytes per block.
"""
from __future__ import annotations

import numpy as np

from .k_quants import QK_K, dequantize_asymmetric, quantize_asymmetric, scale_min_loop
from .qtensor import as_byte_blocks, as_float_blocks

NAME = "q4_k"
BLOCK_SIZE = QK_K                       # 256
BLOCK_BYTES = 2 + 2 + 12 + QK_K // 2    # d, dmin, scales, 128 bytes of nibbles = 144


def pack_codes(q: np.ndarray) -> np.ndarray:
    """uint8 codes (N, 256), each 0..15 -> bytes (N, 128) in Q4_K order (diagram above)."""
    chunks = q.reshape(-1, 4, 2, 32)                             # (N, chunk, low/high, l)
    return (chunks[:, :, 0] | (chunks[:, :, 1] << 4)).reshape(-1, 128).astype(np.uint8)


def unpack_codes(qs: np.ndarray) -> np.ndarray:
    """bytes (N, 128) -> codes (N, 256): per chunk of 32 bytes, the low nibbles then the high."""
    chunks = qs.reshape(-1, 4, 1, 32)                            # (N, chunk, 1, l)
    both = np.concatenate([chunks & 0x0F, chunks >> 4], axis=2)  # (N, chunk, 2, l)
    return both.reshape(-1, QK_K)


def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """float32 (N, 256) -> uint8 (N, 144), following ggml quantize_row_q4_K_ref."""
    x = as_float_blocks(x, NAME, BLOCK_SIZE)
    header, q = quantize_asymmetric(x, 15, -1.0, 0.1, 20)                 # (N, 16), (N, 8, 32)
    return np.concatenate([header, pack_codes(q.reshape(-1, QK_K))], axis=1)   # (N, 144)


def dequantize_blocks(b: np.ndarray) -> np.ndarray:
    """uint8 (N, 144) -> float32 (N, 256), the same float bits as gguf."""
    b = as_byte_blocks(b, NAME, BLOCK_BYTES)
    return dequantize_asymmetric(b[:, :16], unpack_codes(b[:, 16:]).reshape(-1, 8, 32))


def dequantize_block_loop(block) -> np.ndarray:
    """The readable oracle: decode ONE 144-byte block with plain loops (ggml dequantize_row_q4_K)."""
    block = bytes(block)
    assert len(block) == BLOCK_BYTES, f"a q4_k block is {BLOCK_BYTES} bytes, got {len(block)}"
    d = np.frombuffer(block[0:2], dtype="<f2")[0].astype(np.float32)
    dmin = np.frombuffer(block[2:4], dtype="<f2")[0].astype(np.float32)
    scales, qs = block[4:16], block[16:]
    out = np.zeros(BLOCK_SIZE, dtype=np.float32)
    for c in range(4):                                   # chunk of 64 values = sub-blocks 2c, 2c + 1
        sc1, m1 = scale_min_loop(scales, 2 * c)
        sc2, m2 = scale_min_loop(scales, 2 * c + 1)
        d1, dm1 = d * np.float32(sc1), dmin * np.float32(m1)
        d2, dm2 = d * np.float32(sc2), dmin * np.float32(m2)
        for l in range(32):
            byte = qs[32 * c + l]
            out[64 * c + l] = d1 * np.float32(byte & 0x0F) - dm1          # low nibble
            out[64 * c + 32 + l] = d2 * np.float32(byte >> 4) - dm2       # high nibble
    return out
