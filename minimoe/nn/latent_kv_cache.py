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
    c: list[np.ndarray]      # per layer (B, max_len, Rkv): the normalised latents
    k_rot: list[np.ndarray]  # per layer (B, max_len, Dr): the rotary keys, already rotated
    length: int = 0          # positions filled so far (the same in every layer)

    @classmethod
    def empty(cls, n_layers: int, batch: int, max_len: int, kv_lora_rank: int, rope_dim: int,
              dtype=np.float32) -> "LatentKVCache":
        return cls([np.zeros((batch, max_len, kv_lora_rank), dtype) for _ in range(n_layers)],
                   [np.zeros((batch, max_len, rope_dim), dtype) for _ in range(n_layers)], 0)

    @property
    def max_len(self) -> int:
        return self.c[0].shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes the filled positions occupy (what a decode step reads)."""
        per_pos = sum(c[:, :1].nbytes + k[:, :1].nbytes for c, k in zip(self.c, self.k_rot))
        return per_pos * self.length

    def write(self, layer: int, c: np.ndarray, k_rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store c (B, T, Rkv) and k_rot (B, T, Dr) at positions length..length+T; return all of
        them so far, (B, length+T, Rkv) and (B, length+T, Dr). Call `advance(T)` once every layer
        has written."""
        t0, T = self.length, c.shape[1]
        if t0 + T > self.max_len:
            raise ValueError(f"latent KV cache holds {self.max_len} positions; cannot add {T} after {t0}")
        self.c[layer][:, t0:t0 + T] = c
        self.k_rot[layer][:, t0:t0 + T] = k_rot
        return self.c[layer][:, :t0 + T], self.k_rot[layer][:, :t0 + T]

    def advance(self, T: int) -> None:
        self.length += T
