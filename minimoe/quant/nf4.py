"""NF4: 4-bit NormalFloat with one float32 absmax per 64 values (QLoRA, Dettmers et al. 2023).

NF4 has NO GGUF counterpart: llama.cpp cannot read it, and there is no gguf reference to
compare bytes with. We keep it because its 16 levels are spaced for normally distributed
weights, a nice contrast with the evenly spaced q4_0 and the floating-point mxfp4.
The levels, the block size 64, the absmax scale and the nibble order are those of
bitsandbytes (quantize_4bit(..., quant_type="nf4", blocksize=64)); what is ours is the
container: bitsandbytes keeps the absmax in a separate array (and may quantize it again,
"double quantization"), while a minimoe block carries its float32 absmax in front.

One block = 64 weights in 36 bytes = 4.5 bits per weight:

    byte   0    1    2    3    4        5        6               35
         +-------------------+--------+--------+--------+ ... +--------+
         | absmax: float32   | qs[0]  | qs[1]  | qs[2]  |     | qs[31] |
         +-------------------+--------+--------+--------+ ... +--------+
          little-endian

    one byte qs[i], i = 0..31 (bitsandbytes order: the EARLIER element in the HIGH nibble):
         bit  7   6   5   4   3   2   1   0
            +---------------+---------------+
            |    q[2i]      |   q[2i + 1]   |
            +---------------+---------------+

Decode:   x[j] = absmax * NF4[q[j]]                 (float32 product)

    NF4 (bitsandbytes' table, ascending; code 7 is exactly 0, code 15 is exactly 1):
        -1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0,
         0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0

Encode:
    absmax = max |x|                       stored as float32, so the scale is exact
    v      = x / absmax  (0 if absmax == 0), in [-1, 1]
    q      = the nearest NF4 level: the number of midpoints between neighbouring levels
             that are strictly below v, so a tie goes to the LOWER level, as in
             bitsandbytes' dQuantizeNF4 decision tree (`if (x > midpoint)`).
    (bitsandbytes multiplies by 1/absmax instead of dividing; for a subnormal absmax
     1/absmax is inf, so we divide.)

Shapes: N blocks; BLOCK_SIZE = 64 values, BLOCK_BYTES = 36 bytes per block.
"""
from __future__ import annotations

import numpy as np

from .qtensor import as_byte_blocks, as_float_blocks

NAME = "nf4"
BLOCK_SIZE = 64
BLOCK_BYTES = 4 + BLOCK_SIZE // 2   # float32 absmax + 32 bytes of nibbles = 36

# code -> level, from bitsandbytes (functional.py get_4bit_type("nf4"))
NF4_VALUES = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=np.float32)                                                              # (16,)

# the 15 decision thresholds: midpoints of neighbouring levels (bitsandbytes' tree constants)
NF4_MIDPOINTS = ((NF4_VALUES[:-1].astype(np.float64) + NF4_VALUES[1:]) / 2).astype(np.float32)   # (15,)


def pack_nibbles_high_first(q: np.ndarray) -> np.ndarray:
    """codes (N, 64) -> bytes (N, 32): q[2i] in the high nibble, q[2i + 1] in the low one."""
    return ((q[:, 0::2] << 4) | q[:, 1::2]).astype(np.uint8)    # (N, 32)


def unpack_nibbles_high_first(qs: np.ndarray) -> np.ndarray:
    """bytes (N, 32) -> codes (N, 64)."""
    q = np.empty((qs.shape[0], 2 * qs.shape[1]), dtype=np.uint8)
    q[:, 0::2] = qs >> 4            # (N, 32) even elements
    q[:, 1::2] = qs & 0x0F          # (N, 32) odd elements
    return q


def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """float32 (N, 64) -> uint8 (N, 36)."""
    x = as_float_blocks(x, NAME, BLOCK_SIZE)
    absmax = np.abs(x).max(axis=1)                                         # (N,) float32
    safe = np.where(absmax == 0, np.float32(1), absmax)
    v = x / safe[:, None]                                                  # (N, 64) in [-1, 1]; zeros stay 0
    q = np.searchsorted(NF4_MIDPOINTS, v, side="left").astype(np.uint8)    # (N, 64) midpoints < v
    header = absmax.astype("<f4").view(np.uint8).reshape(-1, 4)            # (N,) -> (N, 4)
    return np.concatenate([header, pack_nibbles_high_first(q)], axis=1)    # (N, 4) + (N, 32) -> (N, 36)


def dequantize_blocks(b: np.ndarray) -> np.ndarray:
    """uint8 (N, 36) -> float32 (N, 64)."""
    b = as_byte_blocks(b, NAME, BLOCK_BYTES)
    absmax = np.ascontiguousarray(b[:, 0:4]).view("<f4")[:, 0].astype(np.float32)   # (N, 4) -> (N,)
    q = unpack_nibbles_high_first(b[:, 4:])                                # (N, 32) -> (N, 64)
    return absmax[:, None] * NF4_VALUES[q]                                 # (N, 1) * (N, 64) -> (N, 64)


def nonfinite_blocks(b: np.ndarray) -> np.ndarray:
    """uint8 (N, 36) -> bool (N,): the blocks that decode to a NaN or inf. The values are
    absmax * NF4[q] with |NF4| <= 1, so exactly those whose float32 absmax is not finite."""
    b = as_byte_blocks(b, NAME, BLOCK_BYTES)
    return ~np.isfinite(np.ascontiguousarray(b[:, 0:4]).view("<f4")[:, 0])   # (N, 4) -> (N,)


def dequantize_block_loop(block) -> np.ndarray:
    """The readable oracle: decode ONE 36-byte block with a plain loop and the value table."""
    block = bytes(block)
    assert len(block) == BLOCK_BYTES, f"an nf4 block is {BLOCK_BYTES} bytes, got {len(block)}"
    absmax = np.frombuffer(block[0:4], dtype="<f4")[0]
    out = np.zeros(BLOCK_SIZE, dtype=np.float32)
    for i in range(BLOCK_SIZE // 2):
        byte = block[4 + i]
        out[2 * i] = absmax * NF4_VALUES[byte >> 4]          # high nibble: element 2i
        out[2 * i + 1] = absmax * NF4_VALUES[byte & 0x0F]    # low nibble: element 2i + 1
    return out
