"""Named configurations, reachable as `minimoe.Config.preset(name)` (names are case-insensitive).

Two kinds live here:
  * small models that minimoe trains and runs on a laptop (tiny, shakespeare-*, mixtral-mini);
  * real open-weight models, for the estimator (`minimoe estimate NAME`); each notes its source.
"""
from __future__ import annotations

from minimoe.config import Config, ConfigError

PRESETS: dict[str, dict] = {
    # A few thousand parameters: fast enough for tests and for stepping through in a debugger.
    "tiny": dict(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                 max_seq_len=64),
    "tiny-moe": dict(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                     n_experts=4, top_k=2, d_expert=32, max_seq_len=64),
    # nanoGPT's CPU recipe for character-level Shakespeare (README of karpathy/nanoGPT):
    # 4 layers, 4 heads, 128 channels, block 64, tied embeddings. nanoGPT's GELU MLP has
    # 2*128*512 = 131,072 weights per layer; a SwiGLU of width 344 has 3*128*344 = 132,096.
    # The vocabulary is set from the data when training (65 for Shakespeare).
    "shakespeare-dense": dict(vocab_size=65, d_model=128, n_layers=4, n_heads=4, d_ff=344,
                              max_seq_len=64, tie_embeddings=True),
    # The same with 8 experts of width 172, top-2: 2*3*128*172 = 132,096 active expert weights per
    # layer, plus a 128x8 router; so active parameters match the dense preset within 1%.
    "shakespeare-moe": dict(vocab_size=65, d_model=128, n_layers=4, n_heads=4, d_ff=344,
                            n_experts=8, top_k=2, d_expert=172, max_seq_len=64,
                            tie_embeddings=True),
    # The benchmark model shared with the peer comparison (Hugging Face transformers, llama.cpp).
    "mixtral-mini": dict(vocab_size=8192, d_model=512, n_layers=8, n_heads=8, n_kv_heads=2,
                         head_dim=64, d_ff=1408, n_experts=8, top_k=2, d_expert=1408,
                         max_seq_len=1024, rope_theta=1e6, norm_eps=1e-5, tie_embeddings=False),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str, **overrides) -> Config:
    """The preset `name` (case-insensitive) as a Config, with `overrides` applied."""
    key = str(name).lower()
    if key not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return Config(**{**PRESETS[key], "name": key, **overrides})
