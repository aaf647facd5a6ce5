"""Q4_1: 4-bit unsigned integers with an fp16 scale AND an fp16 minimum per 32 values
(GGUF / ggml type 3).

One block = 32 weights in 20 bytes = 5.0 bits per weight:

    byte   0    1    2    3    4        5               19
         +---------+---------+--------+--------+ ... +--------+
         | d: fp16 | m: fp16 | qs[0]  | qs[1]  |     | qs[15] |
         +---------+---------+--------+--------+ ... +--------+
          little-endian

    one byte qs[j], j = 0..15 (the same order as q4_0):
         bit  7   6   5   4   3   2   1   0
            +---------------+---------------+
            |   q[j + 16]   |     q[j]      |
            +---------------+---------------+

Decode:   x[j] = d * q[j] + m            q in 0..15; computed as (d*q) + m, two float32 roundings

Encode (ggml quantize_row_q4_1_ref, gguf.quants.Q4_1; all arithmetic in float32):
    min, max = smallest and largest x
    d  = (max - min) / 15
    id = 1 / d, or 0 if d == 0
    q  = min(15, trunc((x - min) * id + 0.5))     round half up; x = min gives 0, x = max gives 15
    m  = min
    d and m are stored as fp16, round to nearest even (beyond 65504 -> inf, like ggml).
    The codes were picked with the float32 d and min, not their fp16 roundings.

    TINY BLOCKS: if max - min < 15 * 2^-128 (~6e-38), 1/d overflows to inf; (x - min) * id
    is then inf or nan, whose conversion to an integer is undefined in C. x86 builds of
    ggml (and gguf on x86) turn every such code into 0; we write 0 on purpose, so such a
    block decodes to m for every element.

Shapes: N blocks; BLOCK_SIZE = 32 values, BLOCK_BYTES = 20 bytes per block.
"""
from __future__ import annotations

import numpy as np

from .q4_0 import pack_nibbles, unpack_nibbles
from .qtensor import as_byte_blocks, as_float_blocks, fp16_from_bytes, fp16_to_bytes

NAME = "q4_1"
BLOCK_SIZE = 32
BLOCK_BYTES = 2 + 2 + BLOCK_SIZE // 2   # fp16 d + fp16 m + 16 bytes of nibbles = 20

# code -> (value - m) / d
Q4_1_VALUES = np.arange(16, dtype=np.float32)   # (16,) [0, 1, ..., 15]


def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """float32 (N, 32) -> uint8 (N, 20), byte-identical to ggml / gguf."""
    x = as_float_blocks(x, NAME, BLOCK_SIZE)
    lo = x.min(axis=1)                                               # (N,)
    hi = x.max(axis=1)                                               # (N,)
    d = (hi - lo) / np.float32(15)                                   # (N,) float32
    safe_d = np.where(d == 0, np.float32(1), d)
    with np.errstate(over="ignore", invalid="ignore"):               # TINY BLOCKS: 1/d = inf, 0 * inf = nan
        inv_d = np.where(d == 0, np.float32(0), np.float32(1) / safe_d)  # (N,) 1/d, or 0
        scaled = (x - lo[:, None]) * inv_d[:, None] + np.float32(0.5)   # (N, 32), in [0.5, 15.5]
    q = np.minimum(np.trunc(scaled), 15)                             # (N, 32) codes 0..15
    q[np.isinf(inv_d)] = 0                                           # TINY BLOCKS: code 0, as on x86
    q = q.astype(np.uint8)
    header = [fp16_to_bytes(d, NAME, "scale"), fp16_to_bytes(lo, NAME, "minimum")]
    return np.concatenate([*header, pack_nibbles(q)], axis=1)        # (N, 2+2+16) = (N, 20)


def dequantize_blocks(b: np.ndarray) -> np.ndarray:
    """uint8 (N, 20) -> float32 (N, 32), the same float bits as ggml / gguf."""
    b = as_byte_blocks(b, NAME, BLOCK_BYTES)
    d = fp16_from_bytes(b[:, 0:2])                       # (N, 2) -> (N,)
    m = fp16_from_bytes(b[:, 2:4])                       # (N, 2) -> (N,)
    q = unpack_nibbles(b[:, 4:])                         # (N, 16) -> (N, 32) codes
    return (d[:, None] * Q4_1_VALUES[q]) + m[:, None]    # (N, 1) * (N, 32) + (N, 1) -> (N, 32)


def nonfinite_blocks(b: np.ndarray) -> np.ndarray:
    """uint8 (N, 20) -> bool (N,): the blocks that decode to a NaN or inf. The values are d * q + m
    with q in 0..15 and fp16 d, m (too small to overflow float32), so exactly those whose d or m
    is not finite."""
    b = as_byte_blocks(b, NAME, BLOCK_BYTES)
    return ~(np.isfinite(fp16_from_bytes(b[:, 0:2])) & np.isfinite(fp16_from_bytes(b[:, 2:4])))


def dequantize_block_loop(block) -> np.ndarray:
    """The readable oracle: decode ONE 20-byte block with a plain loop and the value table."""
    block = bytes(block)
    assert len(block) == BLOCK_BYTES, f"a q4_1 block is {BLOCK_BYTES} bytes, got {len(block)}"
    d = np.frombuffer(block[0:2], dtype="<f2")[0].astype(np.float32)
    m = np.frombuffer(block[2:4], dtype="<f2")[0].astype(np.float32)
    out = np.zeros(BLOCK_SIZE, dtype=np.float32)
    for j in range(16):
        byte = block[4 + j]
        out[j] = d * Q4_1_VALUES[byte & 0x0F] + m        # low nibble: element j
        out[j + 16] = d * Q4_1_VALUES[byte >> 4] + m     # high nibble: element j + 16
    return out
