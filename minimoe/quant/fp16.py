"""fp16 (IEEE half) as a storage format: a QTensor of one value per block, as bf16 is.

The bit layout and the value formula are drawn in minimoe/quant/bf16.py. NumPy has float16, so
the codecs are NumPy's own conversions; `fp16_value_loop` there is the readable oracle.

    one "block" = one value in 2 bytes, little-endian: BLOCK_SIZE 1, BLOCK_BYTES 2
"""
from __future__ import annotations

import numpy as np

from .bf16 import fp16_value_loop
from .qtensor import as_byte_blocks, as_float_blocks

NAME = "fp16"
BLOCK_SIZE = 1
BLOCK_BYTES = 2


def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """float32 (N, 1) -> uint8 (N, 2), rounded to nearest even (values past 65504 become inf)."""
    x = as_float_blocks(x, NAME, BLOCK_SIZE)
    with np.errstate(over="ignore"):
        return x.astype("<f2").view(np.uint8)                       # (N, 1) -> (N, 2)


def dequantize_blocks(b: np.ndarray) -> np.ndarray:
    """uint8 (N, 2) -> float32 (N, 1), exact."""
    b = as_byte_blocks(b, NAME, BLOCK_BYTES)
    return np.ascontiguousarray(b).view("<f2").astype(np.float32)    # (N, 2) -> (N, 1)


def nonfinite_blocks(b: np.ndarray) -> np.ndarray:
    """uint8 (N, 2) -> bool (N,): the values whose 5 exponent bits are all ones (inf or NaN)."""
    bits = np.ascontiguousarray(b).view("<u2")[:, 0]                  # (N,)
    return (bits & np.uint16(0x7C00)) == np.uint16(0x7C00)


def dequantize_block_loop(block) -> np.ndarray:
    """The readable oracle: two bytes, low byte first, through the formula in bf16.py."""
    block = bytes(block)
    assert len(block) == BLOCK_BYTES, f"an fp16 value is {BLOCK_BYTES} bytes, got {len(block)}"
    return np.array([fp16_value_loop(block[0] | (block[1] << 8))], dtype=np.float32)
