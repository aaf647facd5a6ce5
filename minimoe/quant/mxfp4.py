"""MXFP4: 4-bit floats (E2M1) with one power-of-two scale (E8M0) per 32 values
(OCP Microscaling spec v1.0; GGUF / ggml type 39; the expert weights of gpt-oss).

One GGUF block = 32 weights in 17 bytes = 4.25 bits per weight:

    byte   0        1        2               16
         +--------+--------+--------+ ... +--------+
         | e:E8M0 | qs[0]  | qs[1]  |     | qs[15] |
         +--------+--------+--------+ ... +--------+

    one byte qs[j], j = 0..15 (the same order as q4_0):
         bit  7   6   5   4   3   2   1   0
            +---------------+---------------+
            |   q[j + 16]   |     q[j]      |
            +---------------+---------------+

    a 4-bit code q = s e e m  (sign, 2 exponent bits, 1 mantissa bit) -> E2M1 value:
        code   0    1    2    3    4    5    6    7
        value  0   0.5  1.0  1.5  2.0  3.0  4.0  6.0      codes 8..15: the same, negated

    the scale byte e (E8M0: an exponent only, bias 127) means 2^(e - 127)

Decode:   x[j] = E2M1[q[j]] * 2^(e - 127)      (= np.ldexp(E2M1[q], e - 127), exact)

    ggml writes the same thing with doubled integers: kvalues_mxfp4 = 2 * E2M1 =
    {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, ...} times GGML_E8M0_TO_FP32_HALF(e) = 2^(e - 128).
    Both products are exact in float32, so they give the same bits. Two details of ggml
    that differ from a literal reading of the spec, and that we copy:
      * code 8 ("-0") decodes to +0.0: ggml's table holds the integer 0, not -0.
      * e = 0xFF is NOT NaN (the OCP spec says it should be): ggml decodes it as 2^128
        like any other exponent (0.5 * 2^128 = 2^127 is finite, 1.0 * 2^128 is inf).
        gpt-oss's own decoder (ldexp(lut, e - 127)) does the same.

Encode (ggml quantize_row_mxfp4_ref, gguf.quants.MXFP4; arithmetic in float32):
    amax = max |x|
    e    = floor(log2(amax)) - 2 + 127 if amax > 0 else 0
           so the scale is 2^floor(log2 amax) / 4 and amax / scale is in [4, 8): values above
           6 * scale are clipped to 6 (the largest E2M1). log2 is the float32 np.log2, which
           rounds values just below a power of two up to it (then e is one higher).
           For amax < 2^-125 this is negative. C casts it to uint8 (undefined behaviour);
           x86 builds and gguf wrap it modulo 256 (e in 232..255, a huge scale), so every
           code becomes 0 and the block decodes to zeros. We do the same, on purpose.
    q    = the code whose value E2M1[q] * 2^(e - 127) is nearest to x; on a tie the lower
           code wins (ggml scans codes 0..15 and keeps the first strict minimum), so +0
           (code 0) is always chosen over -0 (code 8), and 0.25 * scale goes to 0 (code 0).

The gpt-oss / Hugging Face checkpoint layout is different (see from_hf_mxfp4):
    name_blocks  uint8 [..., n_blocks, 16]  byte i = q[2i] (low nibble) | q[2i + 1] << 4
    name_scales  uint8 [..., n_blocks]      the same E8M0 byte e
    i.e. neighbours share a byte there, while GGUF puts q[j] and q[j + 16] together.

Shapes: N blocks; BLOCK_SIZE = 32 values, BLOCK_BYTES = 17 bytes per block.
"""
from __future__ import annotations

import numpy as np

from .q4_0 import pack_nibbles, unpack_nibbles
from .qtensor import QTensor, QuantError, as_byte_blocks, as_float_blocks

NAME = "mxfp4"
BLOCK_SIZE = 32
BLOCK_BYTES = 1 + BLOCK_SIZE // 2   # E8M0 scale byte + 16 bytes of nibbles = 17

# code -> E2M1 value. Code 8 is "-0" in the spec; ggml decodes it as +0.0, so do we.
E2M1_VALUES = np.array(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
     0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=np.float32)   # (16,)

E8M0_BIAS = 127


def scale_exponent(amax: np.ndarray) -> np.ndarray:
    """float32 (N,) block amax -> uint8 (N,) E8M0 byte e, as ggml computes it (see above)."""
    positive = amax > 0
    safe = np.where(positive, amax, np.float32(1))                 # avoid log2(0) = -inf
    exponent = np.floor(np.log2(safe)).astype(np.int32)            # (N,) float32 log2, then floor
    e = np.where(positive, exponent - 2 + E8M0_BIAS, 0)            # (N,) may be < 0 for amax < 2^-125
    return (e & 0xFF).astype(np.uint8)                             # wrap modulo 256, like x86 / gguf


def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """float32 (N, 32) -> uint8 (N, 17), byte-identical to ggml / gguf."""
    x = as_float_blocks(x, NAME, BLOCK_SIZE)
    e = scale_exponent(np.abs(x).max(axis=1))                                 # (N,) uint8
    with np.errstate(over="ignore"):                                          # 6 * 2^(253-127) is inf; never chosen
        grid = np.ldexp(E2M1_VALUES[None, :], e[:, None].astype(np.int32) - E8M0_BIAS)   # (N, 16) value of each code
    err = np.abs(grid[:, None, :] - x[:, :, None])                            # (N, 1, 16) - (N, 32, 1) -> (N, 32, 16)
    q = err.argmin(axis=2).astype(np.uint8)                                   # (N, 32) first nearest code
    return np.concatenate([e[:, None], pack_nibbles(q)], axis=1)              # (N, 1) + (N, 16) -> (N, 17)


def dequantize_blocks(b: np.ndarray) -> np.ndarray:
    """uint8 (N, 17) -> float32 (N, 32), the same float bits as ggml / gguf."""
    b = as_byte_blocks(b, NAME, BLOCK_BYTES)
    e = b[:, 0].astype(np.int32)                                     # (N,)
    q = unpack_nibbles(b[:, 1:])                                     # (N, 16) -> (N, 32) codes
    with np.errstate(over="ignore"):                                 # e >= 254 with big codes: inf, as in ggml
        return np.ldexp(E2M1_VALUES[q], e[:, None] - E8M0_BIAS)      # (N, 32) * 2^(N, 1) -> (N, 32)


def nonfinite_blocks(b: np.ndarray) -> np.ndarray:
    """uint8 (N, 17) -> bool (N,): the blocks that decode to a NaN or inf. A value is
    E2M1 * 2^(e - 127) with |E2M1| <= 6, which overflows float32 only when e >= 254; those few
    blocks are decoded to see."""
    b = as_byte_blocks(b, NAME, BLOCK_BYTES)
    out = np.zeros(len(b), dtype=bool)                               # (N,)
    big = np.flatnonzero(b[:, 0] >= 254)                             # (n,) blocks with a huge scale
    if big.size:
        out[big] = ~np.isfinite(dequantize_blocks(b[big])).all(axis=1)
    return out


def dequantize_block_loop(block) -> np.ndarray:
    """The readable oracle: decode ONE 17-byte block with a plain loop and the value table."""
    block = bytes(block)
    assert len(block) == BLOCK_BYTES, f"an mxfp4 block is {BLOCK_BYTES} bytes, got {len(block)}"
    e = block[0]
    out = np.zeros(BLOCK_SIZE, dtype=np.float32)
    with np.errstate(over="ignore"):
        for j in range(16):
            byte = block[1 + j]
            out[j] = np.ldexp(E2M1_VALUES[byte & 0x0F], e - E8M0_BIAS)        # low nibble: element j
            out[j + 16] = np.ldexp(E2M1_VALUES[byte >> 4], e - E8M0_BIAS)     # high nibble: element j + 16
    return out


# ----------------------------------------------------------------------------------------
# gpt-oss / Hugging Face layout <-> GGUF layout
# ----------------------------------------------------------------------------------------

def _hf_to_codes(blocks: np.ndarray) -> np.ndarray:
    """HF bytes (..., 16) -> codes (..., 32): byte i holds q[2i] low and q[2i + 1] high."""
    codes = np.empty((*blocks.shape[:-1], BLOCK_SIZE), dtype=np.uint8)
    codes[..., 0::2] = blocks & 0x0F        # (..., 16) even elements
    codes[..., 1::2] = blocks >> 4          # (..., 16) odd elements
    return codes


def _codes_to_hf(codes: np.ndarray) -> np.ndarray:
    """codes (..., 32) -> HF bytes (..., 16)."""
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def from_hf_mxfp4(blocks: np.ndarray, scales: np.ndarray, name: str | None = None) -> QTensor:
    """Repack a gpt-oss checkpoint pair (`*_blocks`, `*_scales`) into a GGUF-layout QTensor.

    blocks: uint8 [..., n_blocks, 16]; scales: uint8 [..., n_blocks].
    Returns a QTensor of logical shape [..., n_blocks * 32]; its values are
    E2M1[q] * 2^(scale - 127), which is what gpt-oss computes (except that "-0" reads as +0).
    """
    what = f"MXFP4 tensor {name!r}" if name else "MXFP4 tensor"
    blocks, scales = np.asarray(blocks), np.asarray(scales)
    if blocks.dtype != np.uint8 or scales.dtype != np.uint8:
        raise QuantError(f"{what}: blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}")
    if blocks.ndim < 2 or blocks.shape[-1] != BLOCK_SIZE // 2:
        raise QuantError(f"{what}: blocks must have shape [..., n_blocks, 16], got {list(blocks.shape)}")
    if scales.shape != blocks.shape[:-1]:
        raise QuantError(
            f"{what}: scales shape {list(scales.shape)} must equal blocks shape without its last axis, "
            f"{list(blocks.shape[:-1])}")
    lead, n_blocks = blocks.shape[:-2], blocks.shape[-2]
    codes = _hf_to_codes(blocks).reshape(-1, BLOCK_SIZE)                   # (..., nb, 16) -> (N, 32)
    gguf = np.concatenate([scales.reshape(-1, 1), pack_nibbles(codes)], axis=1)   # (N, 1) + (N, 16) -> (N, 17)
    packed = gguf.reshape(*lead, n_blocks * BLOCK_BYTES)                    # (N, 17) -> (..., nb * 17)
    return QTensor(NAME, (*lead, n_blocks * BLOCK_SIZE), np.ascontiguousarray(packed), name)


def to_hf_mxfp4(qt: QTensor) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of from_hf_mxfp4: GGUF-layout QTensor -> (blocks [..., nb, 16], scales [..., nb])."""
    if not isinstance(qt, QTensor) or qt.fmt != NAME:
        got = qt.fmt if isinstance(qt, QTensor) else type(qt).__name__
        raise QuantError(f"to_hf_mxfp4 needs an mxfp4 QTensor, got {got}")
    qt.validate()
    lead, n_blocks = qt.shape[:-1], qt.shape[-1] // BLOCK_SIZE
    rows = qt.blocks.reshape(-1, BLOCK_BYTES)                               # (N, 17)
    scales = rows[:, 0].reshape(*lead, n_blocks).copy()                     # (N,) -> (..., nb)
    codes = unpack_nibbles(rows[:, 1:])                                     # (N, 16) -> (N, 32)
    blocks = _codes_to_hf(codes).reshape(*lead, n_blocks, BLOCK_SIZE // 2)  # (N, 16) -> (..., nb, 16)
    return blocks, scales
