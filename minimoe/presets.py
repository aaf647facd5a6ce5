"""Named configurations, reachable as `minimoe.Config.preset(name)` (names are case-insensitive).

Two kinds live here:
  * small models that minimoe trains and runs on a laptop (tiny, shakespeare-*, mixtral-mini);
  * real open-weight models, for the estimator (`minimoe estimate NAME`); each notes its source.
"""
from __future__ import annotations

from minimoe.config import Config, ConfigError

PRESETS: dict[str, dict] = {
    # 34,976 (tiny) and 47,520 (tiny-moe) parameters: fast enough for tests and for stepping through
    # in a debugger.
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
    # it is counted apart (n_mtp_layers; `estimate(..., with_mtp=True)` adds it), and the published
    # 671B leaves it out.
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
                        norm_eps=1e-6, tie_embeddings=False, n_mtp_layers=1),
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

# --- the MoE models people ask about now (minimoe/io/hf_config.py reads each family's config.json)
_LLAMA_4 = dict(  # shared by Scout and Maverick: meta-llama/Llama-4-*-17B-*E/config.json, text_config
    vocab_size=202048, d_model=5120, n_layers=48, n_heads=40, n_kv_heads=8, head_dim=128,
    d_ff=16384,                                        # intermediate_size_mlp: the dense layers
    d_expert=8192, n_shared_experts=1, d_shared_expert=8192, top_k=1,
    router="sigmoid_topk", router_renorm=False,        # sigmoid of the top-1 logit scales the token
    attention_chunk_size=8192,                         # RoPE layers attend within 8192-token chunks;
    chunked_layers=[i for i in range(48) if (i + 1) % 4],   # every 4th is a NoPE full-attention layer
    rope_theta=500000.0, norm_eps=1e-5, tie_embeddings=False)

_GLM_4_5 = dict(  # shared by zai-org/GLM-4.5 and GLM-4.5-Air (config.json)
    vocab_size=151552, n_heads=96, n_kv_heads=8, head_dim=128, top_k=8, n_shared_experts=1,
    max_seq_len=131072, router="sigmoid_topk", router_renorm=True,
    qkv_bias=True,                                     # attention_bias: q, k and v, never o
    rope_theta=1e6, norm_eps=1e-5, tie_embeddings=False,
    n_mtp_layers=1)                                    # num_nextn_predict_layers: in the checkpoint

PRESETS.update({
    # source: huggingface.co/mistralai/Mixtral-8x22B-Instruct-v0.1/config.json (the v3 tokenizer)
    "mixtral-8x22b-instruct": dict(PRESETS["mixtral-8x22b"], vocab_size=32768),
    # source: huggingface.co/moonshotai/Kimi-K2-Instruct/config.json (model_type "kimi_k2",
    # architectures DeepseekV3ForCausalLM): DeepSeek-V3's design with 384 experts, 64 heads, one
    # dense layer and no MTP layer
    "kimi-k2": dict(PRESETS["deepseek-v3"], vocab_size=163840, n_heads=64, n_kv_heads=64,
                    max_seq_len=131072, n_experts=384, dense_layers=[0], router_scale=2.827,
                    router_groups=1, router_topk_groups=1,                     # n_group: 1, topk_group: 1
                    rope_theta=50000.0,
                    rope_scaling={"type": "yarn", "factor": 32.0, "beta_fast": 1.0, "beta_slow": 1.0,
                                  "mscale": 1.0, "mscale_all_dim": 1.0,
                                  "original_max_position_embeddings": 4096},
                    n_mtp_layers=0),
    # source: huggingface.co/meta-llama/Llama-4-Scout-17B-16E/config.json: every layer MoE
    "llama-4-scout": dict(_LLAMA_4, n_experts=16, max_seq_len=10485760,
                          rope_scaling={"type": "llama3", "factor": 16.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 1.0, "original_max_position_embeddings": 8192}),
    # source: huggingface.co/meta-llama/Llama-4-Maverick-17B-128E/config.json: MoE on odd layers
    "llama-4-maverick": dict(_LLAMA_4, n_experts=128, dense_layers=list(range(0, 48, 2)),
                             max_seq_len=1048576),
    # source: huggingface.co/Qwen/Qwen3-Next-80B-A3B-Instruct/config.json: Gated DeltaNet on 3
    # layers in 4 (full_attention_interval: 4), gated attention with 2 kv heads on the others
    "qwen3-next-80b-a3b": dict(vocab_size=151936, d_model=2048, n_layers=48, n_heads=16, n_kv_heads=2,
                               head_dim=256, d_ff=5120, max_seq_len=262144,
                               n_experts=512, top_k=10, d_expert=512, n_shared_experts=1,
                               d_shared_expert=512, shared_expert_gate=True, router="softmax_topk",
                               router_renorm=True, qk_norm="head", attn_output_gate=True,
                               linear_layers=[i for i in range(48) if (i + 1) % 4],
                               linear_num_key_heads=16, linear_num_value_heads=32,
                               linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel=4,
                               rope_theta=1e7, norm_eps=1e-6, tie_embeddings=False),
    # source: huggingface.co/zai-org/GLM-4.5/config.json
    "glm-4.5": dict(_GLM_4_5, d_model=5120, n_layers=92, d_ff=12288, n_experts=160, d_expert=1536,
                    dense_layers=[0, 1, 2], router_scale=2.5, qk_norm="head"),
    # source: huggingface.co/zai-org/GLM-4.5-Air/config.json
    "glm-4.5-air": dict(_GLM_4_5, d_model=4096, n_layers=46, d_ff=10944, n_experts=128, d_expert=1408,
                        dense_layers=[0], router_scale=1.0),
    # source: huggingface.co/deepseek-ai/DeepSeek-V2-Lite/config.json: MLA without a low-rank q,
    # 2 shared experts, a softmax router without renormalisation
    "deepseek-v2-lite": dict(vocab_size=102400, d_model=2048, n_layers=27, n_heads=16, n_kv_heads=16,
                             head_dim=192, d_ff=10944, max_seq_len=163840,
                             n_experts=64, top_k=6, d_expert=1408, n_shared_experts=2, dense_layers=[0],
                             router="softmax_topk", router_renorm=False,
                             attention="mla", rope_interleave=True, q_lora_rank=0, kv_lora_rank=512, qk_rope_head_dim=64,
                             qk_nope_head_dim=128, v_head_dim=128, rope_theta=10000.0,
                             rope_scaling={"type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1,
                                           "mscale": 0.707, "mscale_all_dim": 0.707,
                                           "original_max_position_embeddings": 4096},
                             norm_eps=1e-6, tie_embeddings=False),
    # source: huggingface.co/Qwen/Qwen1.5-MoE-A2.7B/config.json: a shared expert with a sigmoid gate
    "qwen1.5-moe-a2.7b": dict(vocab_size=151936, d_model=2048, n_layers=24, n_heads=16, n_kv_heads=16,
                              d_ff=5632, max_seq_len=8192, n_experts=60, top_k=4, d_expert=1408,
                              n_shared_experts=1, d_shared_expert=5632, shared_expert_gate=True,
                              router="softmax_topk", router_renorm=False, qkv_bias=True,
                              rope_theta=1e6, norm_eps=1e-6, tie_embeddings=False),
    # source: huggingface.co/ibm-granite/granite-3.1-3b-a800m-instruct/config.json: 40 experts,
    # top-8, tied embeddings (its muP multipliers scale activations, not parameters)
    "granite-3.1-3b-a800m": dict(vocab_size=49155, d_model=1536, n_layers=32, n_heads=24, n_kv_heads=8,
                                 d_ff=512, max_seq_len=131072, n_experts=40, top_k=8,
                                 router="topk_softmax", rope_theta=1e7, norm_eps=1e-6,
                                 tie_embeddings=True),
    # source: huggingface.co/microsoft/Phi-3.5-MoE-instruct/config.json: LayerNorm, biases on q, k,
    # v, o and the head, sparsemixer routing. Its longrope rope_scaling (2 x 64 factors) is left
    # out: it changes no parameter and no cache.
    "phi-3.5-moe": dict(vocab_size=32064, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=6400,
                        max_seq_len=131072, n_experts=16, top_k=2, router="sparsemixer",
                        qkv_bias=True, o_bias=True, sliding_window=131072, rope_theta=10000.0,
                        norm="layernorm", norm_eps=1e-5, head_bias=True, tie_embeddings=False),
})

REAL_MODELS = ["gpt-oss-120b", "gpt-oss-20b", "mixtral-8x7b", "mixtral-8x22b", "deepseek-v3",
               "qwen3-30b-a3b", "qwen3-235b-a22b", "olmoe-1b-7b", "llama-3.1-8b", "llama-3.1-70b",
               "llama-3.1-405b",
               "kimi-k2", "llama-4-scout", "llama-4-maverick", "qwen3-next-80b-a3b", "glm-4.5",
               "glm-4.5-air", "deepseek-v2-lite", "qwen1.5-moe-a2.7b", "granite-3.1-3b-a800m",
               "phi-3.5-moe", "mixtral-8x22b-instruct"]


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str, **overrides) -> Config:
    """The preset `name` (case-insensitive) as a Config, with `overrides` applied."""
    key = str(name).lower()
    if key not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return Config(**{**PRESETS[key], "name": key, **overrides})
