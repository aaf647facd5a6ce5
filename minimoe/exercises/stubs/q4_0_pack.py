"""Exercise: pack float32 weights into GGUF's Q4_0 blocks, byte for byte.   Grade: minimoe grade q4_0_pack.py

Shape legend: N blocks of 32 weights.

One Q4_0 block of 32 weights is 18 bytes (minimoe/quant/q4_0.py, docs/formats.md):
    bytes 0-1    d, the scale, as a little-endian float16
    bytes 2-17   32 codes of 4 bits: byte j holds code j in its low nibble, code j+16 in its high
ggml's rule (quantize_row_q4_0_ref), in float32:
    m    = the value with the largest |x| (the first one on a tie), with its sign
    d    = m / -8
    code = min(15, trunc(x / d + 8.5))   (use x * (1/d); code 0 for every weight if d == 0)
    the weight decodes to d * (code - 8)

Return uint8 (N, 18). The grader compares every byte with minimoe's (which the tests hold equal
to the gguf library's), including an all-zero block and a tie.
"""
import numpy as np

EXERCISE = "q4_0_pack"


def q4_0_pack(x: np.ndarray) -> np.ndarray:
    """float32 (N, 32) -> uint8 (N, 18)."""
    raise NotImplementedError("pack the blocks into Q4_0 bytes")
