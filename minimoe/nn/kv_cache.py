"""The KV cache: the keys and values of every position seen so far, per layer.

Shape legend: B batch, G kv heads, S cached positions (up to max_len), D head dim.

Decoding one token at position t only needs that token's query against the keys and values of
positions 0..t. Keeping them here turns an O(T^2) recomputation per token into O(T).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class KVCache:
    k: list[np.ndarray]      # per layer (B, G, max_len, D)
    v: list[np.ndarray]      # per layer (B, G, max_len, D)
    length: int = 0          # positions filled so far (the same in every layer)

    @classmethod
    def empty(cls, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
              dtype=np.float32) -> "KVCache":
        shape = (batch, n_kv_heads, max_len, head_dim)   # (B, G, S, D)
        return cls([np.zeros(shape, dtype) for _ in range(n_layers)],
                   [np.zeros(shape, dtype) for _ in range(n_layers)], 0)

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes the filled positions occupy (what a decode step reads)."""
        per_pos = sum(k[:, :, :1].nbytes + v[:, :, :1].nbytes for k, v in zip(self.k, self.v))
        return per_pos * self.length

    def write(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store k, v (B, G, T, D) at positions length..length+T; return all keys and values so
        far, (B, G, length+T, D). Call `advance(T)` once every layer has written."""
        t0, T = self.length, k.shape[2]
        if t0 + T > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; cannot add {T} after {t0}")
        self.k[layer][:, :, t0:t0 + T] = k
        self.v[layer][:, :, t0:t0 + T] = v
        return self.k[layer][:, :, :t0 + T], self.v[layer][:, :, :t0 + T]

    def advance(self, T: int) -> None:
        self.length += T
