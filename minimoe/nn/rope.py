"""Rotary position embeddings (RoPE; Su et al., 2021), in the "rotate half" layout that
Hugging Face Llama/Mixtral checkpoints use: dimension i pairs with dimension i + D/2.

    x_rot = x * cos + rotate_half(x) * sin,   rotate_half([x1, x2]) = [-x2, x1]

Frequencies: inv_freq[i] = theta^(-2i/D) for i < D/2, optionally rescaled ("linear", "llama3",
"yarn"), exactly as transformers' rope initialisers compute them.

Shape legend: T time, D head dim, (..., T, D) any leading (batch, heads) axes.

`rotate` and `rotate_back` below are the reference; for float32 (B, H, T, D) arrays on the numba
backend the same arithmetic runs as one compiled loop (minimoe/kernels/train.py).
"""
from __future__ import annotations

import math

import numpy as np

from minimoe.kernels.dispatch import Leaf, all_float32


def yarn_mscale(factor: float, m: float = 1.0) -> float:
    """YaRN's attention temperature (Peng et al., 2023, eq. 21): 0.1 m ln(factor) + 1, or 1 for factor <= 1."""
    return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0


def inv_freq(head_dim: int, theta: float, scaling: dict | None = None) -> tuple[np.ndarray, float]:
    """(inv_freq (D/2,) float64, attention_factor). The factor multiplies cos and sin (YaRN)."""
    D = head_dim
    freq = 1.0 / theta ** (np.arange(0, D, 2, dtype=np.float64) / D)   # (D/2,)
    if scaling is None:
        return freq, 1.0
    kind, factor = scaling.get("type", scaling.get("rope_type")), float(scaling["factor"])
    if kind == "linear":
        return freq / factor, 1.0
    if kind == "llama3":
        old_ctx = scaling["original_max_position_embeddings"]
        low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
        wavelen = 2 * math.pi / freq
        scaled = np.where(wavelen > old_ctx / low, freq / factor, freq)   # long waves: slow down
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
        return np.where(medium, smoothed, scaled), 1.0
    if kind == "yarn":
        old_ctx = scaling["original_max_position_embeddings"]
        beta_fast, beta_slow = scaling.get("beta_fast", 32), scaling.get("beta_slow", 1)

        attn_factor = scaling.get("attention_factor")
        if attn_factor is None:
            if scaling.get("mscale") and scaling.get("mscale_all_dim"):
                attn_factor = yarn_mscale(factor, scaling["mscale"]) / yarn_mscale(factor, scaling["mscale_all_dim"])
            else:
                attn_factor = yarn_mscale(factor)

        def correction_dim(rotations):  # the dimension whose wavelength fits `rotations` times in old_ctx
            return D * math.log(old_ctx / (rotations * 2 * math.pi)) / (2 * math.log(theta))

        lo, hi = correction_dim(beta_fast), correction_dim(beta_slow)
        if scaling.get("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, D - 1)
        if lo == hi:
            hi += 0.001
        ramp = np.clip((np.arange(D // 2, dtype=np.float64) - lo) / (hi - lo), 0, 1)
        extrapolate = 1 - ramp                              # 1: keep the original frequency
        return freq / factor * (1 - extrapolate) + freq * extrapolate, float(attn_factor)
    raise ValueError(f"rope_scaling.type must be linear, llama3 or yarn, found {kind!r}")


def cos_sin(positions: np.ndarray, head_dim: int, theta: float, scaling: dict | None = None,
            dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """positions (T,) -> cos, sin (T, D), each half repeated: [f0..f_{D/2-1}, f0..f_{D/2-1}]."""
    freq, factor = inv_freq(head_dim, theta, scaling)
    angles = np.outer(positions.astype(np.float64), freq)            # (T,) x (D/2,) -> (T, D/2)
    angles = np.concatenate([angles, angles], axis=-1)               # (T, D)
    return (np.cos(angles) * factor).astype(dtype), (np.sin(angles) * factor).astype(dtype)


def rotate_half(x: np.ndarray) -> np.ndarray:
    """[x1, x2] -> [-x2, x1] along the last axis."""
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x (..., T, D), cos/sin (T, D) -> rotated x (..., T, D).

    y = x * cos + rotate_half(x) * sin. Split D into its two halves, x = [x1, x2] viewed as
    (..., T, 2, D/2); then rotate_half(x) = [-x2, x1] is the halves in reverse order times
    (-1, +1), so the sign goes into a "signed sin" and no half-size copy is made:
        y = x * cos + x[..., ::-1, :] * [-sin1, sin2]
    """
    T, D = x.shape[-2], x.shape[-1]
    h = D // 2
    x2 = x.reshape(*x.shape[:-1], 2, h)                  # (..., T, 2, D/2), a view
    signed_sin = np.stack([-sin[:, :h], sin[:, h:]], axis=1)  # (T, 2, D/2)
    y = x2 * cos.reshape(T, 2, h)                        # (..., T, 2, D/2)
    y += x2[..., ::-1, :] * signed_sin                   # + rotate_half(x) * sin
    return y.reshape(x.shape)


def rotate_back(dy: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """The backward of `rotate`: dy (..., T, D) -> dx. The rotation is orthogonal, so dx rotates
    dy back: dx = dy * cos + rotate_half^T(dy * sin), with rotate_half^T([a, b]) = [b, -a], that is
        dx1 = dy1 cos + dy2 sin,   dx2 = dy2 cos - dy1 sin."""
    T, D = dy.shape[-2], dy.shape[-1]
    h = D // 2
    dy2 = dy.reshape(*dy.shape[:-1], 2, h)               # (..., T, 2, D/2)
    signed_sin = np.stack([sin[:, h:], -sin[:, :h]], axis=1)  # (T, 2, D/2)
    dx = dy2 * cos.reshape(T, 2, h)                      # (..., T, 2, D/2)
    dx += dy2[..., ::-1, :] * signed_sin
    return dx.reshape(dy.shape)


def _heads(x, cos, sin) -> bool:
    """The compiled loops take (B, H, T, D) float32 arrays."""
    return x.ndim == 4 and all_float32(x, cos, sin)


ROTATE = Leaf("rope", rotate, "minimoe.kernels.train:rope", when=_heads)
ROTATE_BACK = Leaf(None, rotate_back, "minimoe.kernels.train:rope_backward", when=_heads)


def forward(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, name: str = "attn.rope"):
    """x (..., T, D), cos/sin (T, D) -> (rotated x (..., T, D), cache)."""
    return ROTATE(x, cos, sin, name=name), (cos, sin)


def backward(dy: np.ndarray, cache):
    """dy (..., T, D) -> dx (..., T, D)."""
    cos, sin = cache
    return ROTATE_BACK(dy, cos, sin)
