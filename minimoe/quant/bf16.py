"""bf16 and fp16: the two 16-bit float formats checkpoints are stored in, used as stored.

Most Hugging Face checkpoints (OLMoE, Qwen3, Mixtral, gpt-oss's non-expert weights) store their
weights in bf16; some in fp16. Both are 2 bytes a value, half of float32. NumPy has a float16
dtype for fp16, but no bfloat16: a bf16 tensor is kept as its raw bits, uint16. The matmul
kernels (minimoe/kernels/halfmatmul.py) read both as stored and widen each value to float32 on
the fly.

    float32   bit 31 | 30 ........ 23 | 22 ............................... 0
                sign |  exponent (8)  |          mantissa (23)
    bf16      bit 15 | 14 ......... 7 | 6 ...... 0
                sign |  exponent (8)  | mantissa (7)       = bits 31..16 of the float32
    fp16      bit 15 | 14 .... 10 | 9 ........ 0
                sign | exponent(5)| mantissa (10)

bf16 is the top half of a float32: the same sign, the same 8-bit exponent (so the same range,
1e-38 to 3e38), and the first 7 of the 23 mantissa bits (so about 3 significant digits).
Widening is a shift, exact for every value:

    float32 bits = bf16 bits << 16                  1.0 = 0x3F80 -> 0x3F800000

and narrowing keeps the top 16 bits, rounded to nearest (ties to even) as torch does.

fp16 trades range for precision: a 5-bit exponent with bias 15 (largest value 65504, smallest
normal 2^-14) and a 10-bit mantissa. Its value is

    e = 0          (-1)^s * m * 2^-24                 (subnormal)
    0 < e < 31     (-1)^s * (1024 + m) * 2^(e - 25)   = (1 + m/1024) * 2^(e - 15)
    e = 31         (-1)^s * inf if m == 0, else NaN

which float32 holds exactly too.

As a storage format beside the packed ones (minimoe/quant/qtensor.py), a bf16 tensor is a QTensor
whose "blocks" are one value each: BLOCK_SIZE 1, BLOCK_BYTES 2, the two bytes of each value
little-endian. So a memory-mapped bf16 weight (minimoe/io/checkpoint.py) goes through the model
exactly as a q4_0 one does: `matmul(x, w)`, `experts[e]`, `dequantize()`. fp16 is the same, in
minimoe/quant/fp16.py.
"""
from __future__ import annotations

import numpy as np

from .qtensor import as_byte_blocks, as_float_blocks

NAME = "bf16"
BLOCK_SIZE = 1          # one value per "block": nothing is shared between values
BLOCK_BYTES = 2


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """uint16 bf16 bits (any shape) -> float32 values: the bits become the top half of a float32."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 values -> uint16 bf16 bits, rounded to nearest, ties to even (torch's rounding).

    Rounding adds 0x7FFF, plus 1 if the kept part is odd, to the bits that are cut off; the
    carry (if any) goes into the kept half. NaN stays NaN (a quiet NaN, 0x7FC0 with its sign)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16     # uint32, top half
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    out = np.where(nan, (u >> 16) | np.uint32(0x0040), rounded)
    return out.astype(np.uint16)


def fp16_value_loop(bits: int) -> float:
    """One fp16 value from its 16 bits by the formula above: the readable oracle."""
    s, e, m = bits >> 15, (bits >> 10) & 0x1F, bits & 0x3FF
    sign = -1.0 if s else 1.0
    if e == 0:
        return sign * m * 2.0 ** -24
    if e == 31:
        return sign * float("inf") if m == 0 else float("nan")
    return sign * (1024 + m) * 2.0 ** (e - 25)


# --- the format-module interface of minimoe/quant/qtensor.py ---------------------------------------

def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """float32 (N, 1) -> uint8 (N, 2): each value rounded to bf16, its bits little-endian."""
    x = as_float_blocks(x, NAME, BLOCK_SIZE)
    return float32_to_bf16(x).astype("<u2").view(np.uint8)        # (N, 1) uint16 -> (N, 2) bytes


def dequantize_blocks(b: np.ndarray) -> np.ndarray:
    """uint8 (N, 2) -> float32 (N, 1), exact."""
    b = as_byte_blocks(b, NAME, BLOCK_BYTES)
    return bf16_to_float32(np.ascontiguousarray(b).view("<u2"))    # (N, 2) bytes -> (N, 1)


def nonfinite_blocks(b: np.ndarray) -> np.ndarray:
    """uint8 (N, 2) -> bool (N,): the values whose 8 exponent bits are all ones (inf or NaN)."""
    bits = np.ascontiguousarray(b).view("<u2")[:, 0]                # (N,)
    return (bits & np.uint16(0x7F80)) == np.uint16(0x7F80)


def dequantize_block_loop(block) -> np.ndarray:
    """The readable oracle: two bytes, low byte first, become the top half of a float32."""
    block = bytes(block)
    assert len(block) == BLOCK_BYTES, f"a bf16 value is {BLOCK_BYTES} bytes, got {len(block)}"
    top = block[0] | (block[1] << 8)
    return np.array([top << 16], dtype=np.uint32).view(np.float32)
