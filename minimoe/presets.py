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
    # gpt-oss in miniature: attention biases and sinks, a sliding-window layer beside a full one,
    # YaRN, a router with a bias (top-k, then softmax), experts with biases and the clamped SwiGLU.
    # Widths are multiples of 32, so the experts quantize to MXFP4 as gpt-oss ships them.
    "tiny-gpt-oss": dict(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                         d_ff=32, n_experts=4, top_k=2, d_expert=32, max_seq_len=64,
                         router="topk_softmax", router_bias=True, expert_bias=True, qkv_bias=True,
                         o_bias=True, attn_sinks=True, sliding_window=8, sliding_layers=[0],
                         ffn_act="swiglu_oai", rope_scaling={"type": "yarn", "factor": 4.0, "beta_fast": 32.0,
                                                             "beta_slow": 1.0, "truncate": False,
                                                             "original_max_position_embeddings": 16}),
    # DeepSeek-V3 in miniature: multi-head latent attention (low-rank q, a 16-wide latent, 4 rotary
    # dims in interleaved pairs), a dense first layer, then a sigmoid router over 8 experts in 4
    # groups (a token picks from its 2 best) with the selection-only correction bias, a routed
    # scaling factor and one shared expert.
    "tiny-deepseek": dict(vocab_size=256, d_model=32, n_layers=3, n_heads=4, head_dim=12, d_ff=64,
                          n_experts=8, top_k=2, d_expert=16, n_shared_experts=1, dense_layers=[0],
                          router="sigmoid_topk", router_renorm=True, router_scale=2.5, router_groups=4,
                          router_topk_groups=2, router_correction_bias=True, attention="mla",
                          q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=8,
                          v_head_dim=8, rope_interleave=True, max_seq_len=64),
    # The benchmark model shared with the peer comparison (Hugging Face transformers, llama.cpp).
    "mixtral-mini": dict(vocab_size=8192, d_model=512, n_layers=8, n_heads=8, n_kv_heads=2,
                         head_dim=64, d_ff=1408, n_experts=8, top_k=2, d_expert=1408,
                         max_seq_len=1024, rope_theta=1e6, norm_eps=1e-5, tie_embeddings=False),
}

# --- real open-weight models, for the estimator -----------------------------------------------
# Each entry is its model's Hugging Face config.json, translated field by field (the same
# translation minimoe.io.hf_config.config_from_hf does; tests/test_estimate.py checks the two agree,
# and that the parameter totals equal what transformers instantiates for that config.json).

_GPT_OSS = dict(  # shared by both sizes: openai/gpt-oss-{20b,120b}/config.json
    vocab_size=201088, d_model=2880, n_heads=64, n_kv_heads=8, head_dim=64, d_ff=2880,
    d_expert=2880, top_k=4, max_seq_len=131072,
    router="topk_softmax", router_bias=True, expert_bias=True,          # router and experts carry biases
    qkv_bias=True, o_bias=True, attn_sinks=True,                        # attention_bias: true; sinks
    sliding_window=128,                                                 # layer_types: even layers slide
    rope_theta=150000.0,
    rope_scaling={"type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                  "original_max_position_embeddings": 4096, "truncate": False},
    norm_eps=1e-5, ffn_act="swiglu_oai", swiglu_limit=7.0, swiglu_alpha=1.702, tie_embeddings=False)

_QWEN3_MOE = dict(  # shared by the Qwen3 MoE sizes: Qwen/Qwen3-*-A*B/config.json
    vocab_size=151936, head_dim=128, top_k=8, n_experts=128, qk_norm="head",
    router="softmax_topk", router_renorm=True, rope_theta=1e6, norm_eps=1e-6, max_seq_len=40960,
    tie_embeddings=False)

_LLAMA_31 = dict(  # shared by the Llama 3.1 sizes: meta-llama/Llama-3.1-*B/config.json
    vocab_size=128256, n_kv_heads=8, max_seq_len=131072, rope_theta=500000.0,
    rope_scaling={"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192},
    norm_eps=1e-5, tie_embeddings=False)

PRESETS.update({
    # source: huggingface.co/openai/gpt-oss-120b/config.json
    "gpt-oss-120b": dict(_GPT_OSS, n_layers=36, n_experts=128, sliding_layers=list(range(0, 36, 2))),
    # source: huggingface.co/openai/gpt-oss-20b/config.json
    "gpt-oss-20b": dict(_GPT_OSS, n_layers=24, n_experts=32, sliding_layers=list(range(0, 24, 2))),
    # source: huggingface.co/mistralai/Mixtral-8x7B-v0.1/config.json
    "mixtral-8x7b": dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                         d_ff=14336, n_experts=8, top_k=2, max_seq_len=32768, rope_theta=1e6,
                         norm_eps=1e-5, tie_embeddings=False),
    # source: huggingface.co/mistralai/Mixtral-8x22B-v0.1/config.json (the Instruct model has 32768 tokens)
    "mixtral-8x22b": dict(vocab_size=32000, d_model=6144, n_layers=56, n_heads=48, n_kv_heads=8,
                          d_ff=16384, n_experts=8, top_k=2, max_seq_len=65536, rope_theta=1e6,
                          norm_eps=1e-5, tie_embeddings=False),
    # source: huggingface.co/deepseek-ai/DeepSeek-V3/config.json. The checkpoint also holds one
    # multi-token-prediction layer (num_nextn_predict_layers: 1) that transformers does not build;
    # it is not counted here, as in the published 671B.
    "deepseek-v3": dict(vocab_size=129280, d_model=7168, n_layers=61, n_heads=128, n_kv_heads=128,
                        head_dim=192, d_ff=18432, max_seq_len=163840,
                        n_experts=256, top_k=8, d_expert=2048, n_shared_experts=1,
                        dense_layers=[0, 1, 2],                          # first_k_dense_replace: 3
                        router="sigmoid_topk", router_renorm=True, router_scale=2.5,
                        router_groups=8, router_topk_groups=4, router_correction_bias=True,
                        attention="mla", rope_interleave=True, q_lora_rank=1536, kv_lora_rank=512, qk_rope_head_dim=64,
                        qk_nope_head_dim=128, v_head_dim=128, rope_theta=10000.0,
                        rope_scaling={"type": "yarn", "factor": 40.0, "beta_fast": 32, "beta_slow": 1,
                                      "mscale": 1.0, "mscale_all_dim": 1.0,
                                      "original_max_position_embeddings": 4096},
                        norm_eps=1e-6, tie_embeddings=False),
    # source: huggingface.co/Qwen/Qwen3-30B-A3B/config.json
    "qwen3-30b-a3b": dict(_QWEN3_MOE, d_model=2048, n_layers=48, n_heads=32, n_kv_heads=4, d_ff=6144,
                          d_expert=768),
    # source: huggingface.co/Qwen/Qwen3-235B-A22B/config.json
    "qwen3-235b-a22b": dict(_QWEN3_MOE, d_model=4096, n_layers=94, n_heads=64, n_kv_heads=4, d_ff=12288,
                            d_expert=1536),
    # source: huggingface.co/allenai/OLMoE-1B-7B-0924/config.json
    "olmoe-1b-7b": dict(vocab_size=50304, d_model=2048, n_layers=16, n_heads=16, n_kv_heads=16,
                        d_ff=1024, n_experts=64, top_k=8, qk_norm="full", router="softmax_topk",
                        router_renorm=False, max_seq_len=4096, rope_theta=10000.0, norm_eps=1e-5,
                        tie_embeddings=False),
    # source: huggingface.co/meta-llama/Llama-3.1-8B/config.json
    "llama-3.1-8b": dict(_LLAMA_31, d_model=4096, n_layers=32, n_heads=32, d_ff=14336),
    # source: huggingface.co/meta-llama/Llama-3.1-70B/config.json
    "llama-3.1-70b": dict(_LLAMA_31, d_model=8192, n_layers=80, n_heads=64, d_ff=28672),
    # source: huggingface.co/meta-llama/Llama-3.1-405B/config.json
    "llama-3.1-405b": dict(_LLAMA_31, d_model=16384, n_layers=126, n_heads=128, d_ff=53248),
})

REAL_MODELS = ["gpt-oss-120b", "gpt-oss-20b", "mixtral-8x7b", "mixtral-8x22b", "deepseek-v3",
               "qwen3-30b-a3b", "qwen3-235b-a22b", "olmoe-1b-7b", "llama-3.1-8b", "llama-3.1-70b",
               "llama-3.1-405b"]


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str, **overrides) -> Config:
    """The preset `name` (case-insensitive) as a Config, with `overrides` applied."""
    key = str(name).lower()
    if key not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return Config(**{**PRESETS[key], "name": key, **overrides})
