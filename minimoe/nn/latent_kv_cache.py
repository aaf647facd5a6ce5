"""The KV cache of multi-head latent attention (minimoe/nn/mla.py): latents, not keys and values.

Shape legend: B batch, S cached positions (up to max_len), Rkv kv_lora_rank, Dr qk_rope_head_dim.

MLA's keys and values are both decompressed from one small latent vector per token, c (Rkv), plus
one rotary key k_rot (Dr) that every head shares. Caching those two is enough: a token costs
Rkv + Dr numbers per layer, where grouped-query attention (nn/kv_cache.py) keeps 2 * G * D.
For DeepSeek-V3 that is 512 + 64 = 576 numbers, where caching its 128 heads' keys (192 each)
and values (128 each) would take 128 * (192 + 128) = 40,960: 71 times more.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LatentKVCache:
    latent: list[np.ndarray]  # per layer (B, max_len, Rkv + Dr): each position's [c | k_rot], k_rot rotated
    kv_lora_rank: int         # Rkv: where c ends and k_rot begins
    length: int = 0           # positions filled so far (the same in every layer)

    @classmethod
    def empty(cls, n_layers: int, batch: int, max_len: int, kv_lora_rank: int, rope_dim: int,
              dtype=np.float32) -> "LatentKVCache":
        shape = (batch, max_len, kv_lora_rank + rope_dim)  # (B, S, Rkv + Dr)
        return cls([np.zeros(shape, dtype) for _ in range(n_layers)], kv_lora_rank, 0)

    @property
    def max_len(self) -> int:
        return self.latent[0].shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes the filled positions occupy (what a decode step reads)."""
        return sum(a[:, :1].nbytes for a in self.latent) * self.length

    def write(self, layer: int, c: np.ndarray, k_rot: np.ndarray) -> np.ndarray:
        """Store c (B, T, Rkv) and k_rot (B, T, Dr) at positions length..length+T; return every
        position's [c | k_rot] so far, (B, length+T, Rkv+Dr) (a view). Call `advance(T)` once every
        layer has written."""
        t0, T = self.length, c.shape[1]
        if t0 + T > self.max_len:
            raise ValueError(f"latent KV cache holds {self.max_len} positions; cannot add {T} after {t0}")
        cache, R = self.latent[layer], self.kv_lora_rank
        cache[:, t0:t0 + T, :R] = c
        cache[:, t0:t0 + T, R:] = k_rot
        return cache[:, :t0 + T]

    def advance(self, T: int) -> None:
        self.length += T
