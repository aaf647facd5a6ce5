"""Q8_0: 8-bit integers with one fp16 scale per 32 values (GGUF / ggml type 8).

One block = 32 weights in 34 bytes = 8.5 bits per weight:

    byte   0    1    2       3       4              33
         +---------+-------+-------+-------+ ... +-------+
         | d: fp16 | q[0]  | q[1]  | q[2]  |     | q[31] |
         +---------+-------+-------+-------+ ... +-------+
          little-endian   each q[j] is a signed int8 (two's complement), in element order

Decode:   x[j] = d * q[j]                          q in -127..127 (ggml never writes -128)

Encode (ggml quantize_row_q8_0_ref, gguf.quants.Q8_0; all arithmetic in float32):
    amax = max |x|
    d    = amax / 127
    id   = 1 / d, or 0 if d == 0          (ggml multiplies by 1/d; it never divides by d)
    q    = roundf(x * id)                 round half AWAY from zero: 2.5 -> 3, -2.5 -> -3
                                          (not numpy's np.round, which rounds half to even)
    d is stored as fp16, round to nearest even; amax >= 127 * 65520 makes it inf (like ggml)

    TINY BLOCKS: if amax < 127 * 2^-128 (~3.7e-37), 1/d overflows to inf; x * id is then
    +-inf or nan, whose conversion to int8 is undefined in C. x86 builds of ggml (and gguf
    on x86) turn every such code into 0; we write 0 on purpose, so the block decodes to
    zeros. (d itself is far below the fp16 range anyway and is stored as 0.)

Shapes: N blocks; BLOCK_SIZE = 32 values, BLOCK_BYTES = 34 bytes per block.
"""
from __future__ import annotations

import numpy as np

from .qtensor import as_byte_blocks, as_float_blocks, fp16_from_bytes, fp16_to_bytes

NAME = "q8_0"
BLOCK_SIZE = 32
BLOCK_BYTES = 2 + BLOCK_SIZE    # fp16 d + 32 int8 = 34


def round_half_away_from_zero(v: np.ndarray) -> np.ndarray:
    """C's roundf: 0.5 -> 1, 1.5 -> 2, 2.5 -> 3, -2.5 -> -3 (np.round would give 0, 2, 2, -2).

    Computed exactly: for float32 a >= 0, the fraction a - floor(a) is exact.
    (floor(a + 0.5) is not: 0.49999997 + 0.5 rounds up to 1.0 in float32.)
    """
    a = np.abs(v)
    whole = np.floor(a)
    rounded = np.where(a - whole >= 0.5, whole + 1, whole)
    return np.copysign(rounded, v)


def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """float32 (N, 32) -> uint8 (N, 34), byte-identical to ggml / gguf."""
    x = as_float_blocks(x, NAME, BLOCK_SIZE)
    amax = np.abs(x).max(axis=1)                                    # (N,)
    d = amax / np.float32(127)                                      # (N,) float32
    safe_d = np.where(d == 0, np.float32(1), d)
    with np.errstate(over="ignore", invalid="ignore"):               # TINY BLOCKS: 1/d = inf, 0 * inf = nan
        inv_d = np.where(d == 0, np.float32(0), np.float32(1) / safe_d)  # (N,) 1/d, or 0
        q = round_half_away_from_zero(x * inv_d[:, None])           # (N, 32) in -127..127
    q[np.isinf(inv_d)] = 0                                          # TINY BLOCKS: code 0, as on x86
    q_bytes = q.astype(np.int8).view(np.uint8)                      # (N, 32) two's complement
    return np.concatenate([fp16_to_bytes(d, NAME), q_bytes], axis=1)   # (N, 2) + (N, 32) -> (N, 34)


def dequantize_blocks(b: np.ndarray) -> np.ndarray:
    """uint8 (N, 34) -> float32 (N, 32), the same float bits as ggml / gguf."""
    b = as_byte_blocks(b, NAME, BLOCK_BYTES)
    d = fp16_from_bytes(b[:, 0:2])                                  # (N, 2) -> (N,)
    q = np.ascontiguousarray(b[:, 2:]).view(np.int8)                # (N, 32) int8
    return q.astype(np.float32) * d[:, None]                        # (N, 32) * (N, 1) -> (N, 32)


def nonfinite_blocks(b: np.ndarray) -> np.ndarray:
    """uint8 (N, 34) -> bool (N,): the blocks that decode to a NaN or inf. The values are d * q with q
    an int8, so exactly those whose fp16 scale d is not finite."""
    b = as_byte_blocks(b, NAME, BLOCK_BYTES)
    return ~np.isfinite(fp16_from_bytes(b[:, 0:2]))                # (N, 2) -> (N,)


def dequantize_block_loop(block) -> np.ndarray:
    """The readable oracle: decode ONE 34-byte block with a plain loop."""
    block = bytes(block)
    assert len(block) == BLOCK_BYTES, f"a q8_0 block is {BLOCK_BYTES} bytes, got {len(block)}"
    d = np.frombuffer(block[0:2], dtype="<f2")[0].astype(np.float32)
    out = np.zeros(BLOCK_SIZE, dtype=np.float32)
    for j in range(BLOCK_SIZE):
        byte = block[2 + j]
        q = byte - 256 if byte >= 128 else byte     # uint8 -> int8
        out[j] = np.float32(q) * d
    return out
