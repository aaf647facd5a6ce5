"""Q2_K: 2-bit codes in super-blocks of 256 with 4-bit scales and mins per 16 (GGUF / ggml type 10;
the bulk of Q2_K files). Shared pieces: k_quants.py.

One super-block = 256 weights in 84 bytes = 2.625 bits per weight:

    byte   0                16                        80        82          84
         +------ ... ------+--------- ... -----------+---------+-----------+
         | scales[16]      | qs[64]: 2-bit codes     | d: fp16 | dmin: fp16|
         +------ ... ------+--------- ... -----------+---------+-----------+
           scales[j] = sc[j] | m[j] << 4   (4 bits each)

    value v = 128n + 32r + l (n = 0, 1; r = 0..3; l = 0..31), sub-block v // 16:
        q = (qs[32n + l] >> 2r) & 3

Decode:   x = (d * sc[j]) * q - (dmin * m[j])                               j = v // 16, q in 0..3

Encode (ggml quantize_row_q2_K_ref):
    1. each sub-block of 16: make_qkx2_quants(nmax 3, weights |x|, rmin -0.5, rdelta 0.1,
       15 steps, smallest weighted ABSOLUTE error) -> scale, min
    2. the super-block: sc[j] = round(15 * scale[j] / max scale), d = fp16(max scale / 15); the
       mins alike into m[j] and dmin (ggml stores the integers without clamping them)
    3. codes again with the stored scales: q = clamp(round((x + dmin m[j]) / (d sc[j])), 0, 3)
       (a sub-block whose d * sc[j] is 0 keeps step 1's codes)

Shapes: N super-blocks; BLOCK_SIZE = 256 values, BLOCK_BYTES = 84 bytes per block.
"""
from __future__ import annotations

import numpy as np

from .k_quants import QK_K, make_qkx2_quants, nearest_int
from .qtensor import as_byte_blocks, as_float_blocks, fp16_from_bytes, fp16_to_bytes

NAME = "q2_k"
BLOCK_SIZE = QK_K                                   # 256
BLOCK_BYTES = QK_K // 16 + QK_K // 4 + 2 + 2        # scales, qs, d, dmin = 84

F32 = np.float32
_SHIFT = (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]   # (1, 1, 4, 1): row r's 2 bits


def pack_codes(q: np.ndarray) -> np.ndarray:
    """codes (N, 256) 0..3 -> qs (N, 64): byte 32n + l holds rows r = 0..3 at bits 2r."""
    rows = q.reshape(-1, 2, 4, 32)                                 # (N, n, r, l)
    return (rows[:, :, 0] | (rows[:, :, 1] << 2) | (rows[:, :, 2] << 4) | (rows[:, :, 3] << 6)
            ).reshape(-1, 64).astype(np.uint8)


def unpack_codes(qs: np.ndarray) -> np.ndarray:
    """qs (N, 64) -> codes (N, 256)."""
    return ((qs.reshape(-1, 2, 1, 32) >> _SHIFT) & 3).reshape(-1, QK_K)


def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """float32 (N, 256) -> uint8 (N, 84), following ggml quantize_row_q2_K_ref."""
    x = as_float_blocks(x, NAME, BLOCK_SIZE)
    n = x.shape[0]
    sub = x.reshape(n * 16, 16)                                    # (N*16, 16) sub-blocks
    scale, min_, L = make_qkx2_quants(sub, np.abs(sub), 3, -0.5, 0.1, 15, use_mad=True)
    scale, min_, L = scale.reshape(n, 16), min_.reshape(n, 16), L.reshape(n, 16, 16)
    max_scale = np.maximum(scale.max(axis=1), F32(0))              # (N,) ggml starts the max at 0
    max_min = np.maximum(min_.max(axis=1), F32(0))
    with np.errstate(divide="ignore", invalid="ignore"):                   # max 0: inf * 0, masked
        sc = np.where(max_scale[:, None] > 0, nearest_int((F32(15) / max_scale)[:, None] * scale), 0)
        m = np.where(max_min[:, None] > 0, nearest_int((F32(15) / max_min)[:, None] * min_), 0)
    stored = ((sc & 0xFF) | (m << 4)) & 0xFF                       # (N, 16) as the C uint8 stores do
    stored = stored.astype(np.uint8)
    d = np.where(max_scale > 0, max_scale / F32(15), F32(0)).astype(np.float16).astype(F32)
    dmin = np.where(max_min > 0, max_min / F32(15), F32(0)).astype(np.float16).astype(F32)
    ds = d[:, None] * (stored & 0x0F).astype(F32)                  # (N, 16)
    dm = dmin[:, None] * (stored >> 4).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        l = np.clip(nearest_int((x.reshape(n, 16, 16) + dm[:, :, None]) / np.where(ds == 0, F32(1), ds)[:, :, None]), 0, 3)
    q = np.where((ds == 0)[:, :, None], L, l).astype(np.uint8).reshape(n, QK_K)
    return np.concatenate([stored, pack_codes(q), fp16_to_bytes(d, NAME), fp16_to_bytes(dmin, NAME, "min")], axis=1)


def dequantize_blocks(b: np.ndarray) -> np.ndarray:
    """uint8 (N, 84) -> float32 (N, 256), the same float bits as gguf."""
    b = as_byte_blocks(b, NAME, BLOCK_BYTES)
    scales = b[:, 0:16]
    d, dmin = fp16_from_bytes(b[:, 80:82]), fp16_from_bytes(b[:, 82:84])          # (N,), (N,)
    dl = (d[:, None] * (scales & 0x0F).astype(F32))[:, :, None]                    # (N, 16, 1)
    ml = (dmin[:, None] * (scales >> 4).astype(F32))[:, :, None]
    q = unpack_codes(b[:, 16:80]).reshape(-1, 16, 16).astype(F32)                  # (N, 16, 16)
    return (dl * q - ml).reshape(-1, QK_K)


def dequantize_block_loop(block) -> np.ndarray:
    """The readable oracle: decode ONE 84-byte block with plain loops (ggml dequantize_row_q2_K)."""
    block = bytes(block)
    assert len(block) == BLOCK_BYTES, f"a q2_k block is {BLOCK_BYTES} bytes, got {len(block)}"
    scales, qs = block[0:16], block[16:80]
    d = np.frombuffer(block[80:82], dtype="<f2")[0].astype(np.float32)
    dmin = np.frombuffer(block[82:84], dtype="<f2")[0].astype(np.float32)
    out = np.zeros(BLOCK_SIZE, dtype=np.float32)
    for v in range(BLOCK_SIZE):
        n, r, l = v // 128, (v % 128) // 32, v % 32
        sc = scales[v // 16]
        q = (qs[32 * n + l] >> (2 * r)) & 3
        out[v] = d * np.float32(sc & 0x0F) * np.float32(q) - dmin * np.float32(sc >> 4)
    return out
