"""Q4_0: 4-bit integers with one fp16 scale per 32 values (GGUF / ggml type 2).

One block = 32 weights in 18 bytes = 4.5 bits per weight:

    byte   0    1    2        3        4            17
         +---------+--------+--------+--------+ ... +--------+
         | d: fp16 | qs[0]  | qs[1]  | qs[2]  |     | qs[15] |
         +---------+--------+--------+--------+ ... +--------+
          little-endian

    one byte qs[j], j = 0..15:
         bit  7   6   5   4   3   2   1   0
            +---------------+---------------+
            |   q[j + 16]   |     q[j]      |
            +---------------+---------------+
              high nibble      low nibble

    So the first 16 weights live in the low nibbles, the last 16 in the high nibbles
    (NOT "two neighbours per byte"). q4_1 and the GGUF mxfp4 block use the same order.

Decode:   x[j] = d * (q[j] - 8)            q in 0..15, so x/d in {-8, ..., 7}

Encode (ggml quantize_row_q4_0_ref, gguf.quants.Q4_0; all arithmetic in float32):
    max = the value with the largest |x|, sign kept (the first one if several tie)
    d   = max / -8                  the max itself lands exactly on q = 0 (x/d = -8);
                                    d is negative when max is positive
    id  = 1 / d, or 0 if d == 0
    q   = min(15, trunc(x * id + 8.5))
          = round-half-up(x / d) + 8, clamped: a value of -max gives x*id = +8 -> 16 -> 15,
          i.e. it decodes as 7*d = -7/8 max, the worst case (error |max| / 8)
    d is stored as fp16, round to nearest even; |d| >= 65520 becomes inf (like ggml)

    TINY BLOCKS: if |max| < 2^-125 (~2.4e-38), then |d| < 2^-128 and 1/d overflows to inf;
    x * id is then +-inf or nan, and C's float -> int conversion of those is undefined.
    x86 builds of ggml (and gguf on x86) turn every such code into 0; we write 0 on
    purpose, so such a block decodes to -8*d = max for every element.

Shapes: N blocks; BLOCK_SIZE = 32 values, BLOCK_BYTES = 18 bytes per block.
"""
from __future__ import annotations

import numpy as np

from .qtensor import as_byte_blocks, as_float_blocks, fp16_from_bytes, fp16_to_bytes

NAME = "q4_0"
BLOCK_SIZE = 32
BLOCK_BYTES = 2 + BLOCK_SIZE // 2   # fp16 d + 16 bytes of nibbles = 18

# code -> value / d
Q4_0_VALUES = np.arange(16, dtype=np.float32) - 8   # (16,) [-8, -7, ..., 7]


# The GGUF nibble order, shared with q4_1 and mxfp4 -------------------------------------

def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """uint8 codes (N, 32), each 0..15 -> bytes (N, 16) with q[j] low, q[j + 16] high."""
    low, high = q[:, :16], q[:, 16:]                 # (N, 32) -> (N, 16), (N, 16)
    return (low | (high << 4)).astype(np.uint8)      # (N, 16)


def unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """bytes (N, 16) -> uint8 codes (N, 32): low nibbles are codes 0..15, high are 16..31."""
    low = qs & 0x0F                                  # (N, 16)  codes j
    high = qs >> 4                                   # (N, 16)  codes j + 16
    return np.concatenate([low, high], axis=1)       # (N, 32)


# Encode / decode ----------------------------------------------------------------------

def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """float32 (N, 32) -> uint8 (N, 18), byte-identical to ggml / gguf."""
    x = as_float_blocks(x, NAME, BLOCK_SIZE)
    n = x.shape[0]
    i_max = np.abs(x).argmax(axis=1)                         # (N,) first index of largest |x|
    signed_max = x[np.arange(n), i_max]                      # (N,) that value, with its sign
    d = signed_max / np.float32(-8)                          # (N,) float32
    safe_d = np.where(d == 0, np.float32(1), d)
    with np.errstate(over="ignore", invalid="ignore"):               # TINY BLOCKS: 1/d = inf, 0 * inf = nan
        inv_d = np.where(d == 0, np.float32(0), np.float32(1) / safe_d)  # (N,) 1/d, or 0
        scaled = x * inv_d[:, None] + np.float32(8.5)                # (N, 32) float32, in [0.5, 16.5]
    q = np.minimum(np.trunc(scaled), 15)                     # (N, 32) codes 0..15
    q[np.isinf(inv_d)] = 0                                   # TINY BLOCKS: code 0, as on x86
    q = q.astype(np.uint8)
    return np.concatenate([fp16_to_bytes(d, NAME), pack_nibbles(q)], axis=1)   # (N, 2) + (N, 16) -> (N, 18)


def dequantize_blocks(b: np.ndarray) -> np.ndarray:
    """uint8 (N, 18) -> float32 (N, 32), the same float bits as ggml / gguf."""
    b = as_byte_blocks(b, NAME, BLOCK_BYTES)
    d = fp16_from_bytes(b[:, 0:2])                   # (N, 2) -> (N,)
    q = unpack_nibbles(b[:, 2:])                     # (N, 16) -> (N, 32) codes
    return d[:, None] * Q4_0_VALUES[q]               # (N, 1) * (N, 32) -> (N, 32)


def nonfinite_blocks(b: np.ndarray) -> np.ndarray:
    """uint8 (N, 18) -> bool (N,): the blocks that decode to a NaN or inf. The values are d * (q - 8)
    with q in 0..15, so exactly those whose fp16 scale d is not finite."""
    b = as_byte_blocks(b, NAME, BLOCK_BYTES)
    return ~np.isfinite(fp16_from_bytes(b[:, 0:2]))    # (N, 2) -> (N,)


def dequantize_block_loop(block) -> np.ndarray:
    """The readable oracle: decode ONE 18-byte block with a plain loop and the value table."""
    block = bytes(block)
    assert len(block) == BLOCK_BYTES, f"a q4_0 block is {BLOCK_BYTES} bytes, got {len(block)}"
    d = np.frombuffer(block[0:2], dtype="<f2")[0].astype(np.float32)
    out = np.zeros(BLOCK_SIZE, dtype=np.float32)
    for j in range(16):
        byte = block[2 + j]
        out[j] = d * Q4_0_VALUES[byte & 0x0F]        # low nibble: element j
        out[j + 16] = d * Q4_0_VALUES[byte >> 4]     # high nibble: element j + 16
    return out
