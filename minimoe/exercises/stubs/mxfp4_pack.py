"""Exercise: pack float32 weights into MXFP4 blocks, byte for byte.   Grade: minimoe grade mxfp4_pack.py

Shape legend: N blocks of 32 weights.

One MXFP4 block of 32 weights is 17 bytes (minimoe/quant/mxfp4.py, docs/formats.md):
    byte 0       e, an E8M0 scale: the block's values are code_value * 2^(e - 127)
    bytes 1-16   32 E2M1 codes of 4 bits, byte j: code j in the low nibble, code j+16 in the high
E2M1 code -> value: [0, .5, 1, 1.5, 2, 3, 4, 6, 0, -.5, -1, -1.5, -2, -3, -4, -6]
ggml's rule: amax = max |x| of the block; e = floor(log2(amax)) - 2 + 127 (e = 0 if amax == 0);
each weight gets the code whose value * 2^(e - 127) is nearest (the lowest code on a tie).

Return uint8 (N, 17). Graded byte for byte against minimoe's (held equal to gguf's).
"""
import numpy as np

EXERCISE = "mxfp4_pack"


def mxfp4_pack(x: np.ndarray) -> np.ndarray:
    """float32 (N, 32) -> uint8 (N, 17)."""
    raise NotImplementedError("pack the blocks into MXFP4 bytes")
