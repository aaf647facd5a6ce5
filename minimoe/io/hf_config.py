"""Hugging Face `config.json` -> minimoe Config, one small converter per model family.

Each converter reads the fields its family's transformers class reads, with the same defaults,
and says which field is missing or unsupported by name. Add a family by adding a converter to
CONVERTERS.
"""
from __future__ import annotations

from minimoe.config import Config, ConfigError


def _get(d: dict, key: str | tuple, source: str, default=...):
    """d[key], or `default` when it is absent or null (no default: the field is required). `key`
    may be a tuple of the names transformers treats as one field (its attribute_map: e.g.
    Qwen3-MoE's Hub configs say num_experts, transformers 5 writes num_local_experts); the first
    one present wins.

    The value must have the JSON type of the default: a number for a number, true/false for a
    bool, a list for a list (so "false" is not read as true, nor "64" as a width). A required
    field, or one that defaults to null, is checked where it is used (Config checks every size)."""
    keys = key if isinstance(key, tuple) else (key,)
    present = [k for k in keys if k in d and d[k] is not None]
    if not present:
        if default is ...:
            raise ConfigError(f"{source}: missing field {keys[0]!r}")
        return default
    value = d[present[0]]
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, (list, dict)):
        ok, kind = isinstance(value, type(default)), f"a JSON {'array' if isinstance(default, list) else 'object'}"
    else:                                                   # required, or null by default
        ok, kind = True, ""
    if not ok:
        raise ConfigError(f"{source}: {present[0]} must be {kind}, found {value!r}")
    return value


def _name(d: dict, family: str) -> str:
    """A label for the model: its _name_or_path if that is a non-empty string, else the family."""
    name = d.get("_name_or_path")
    return name if isinstance(name, str) and name else family


def _rope(d: dict, source: str, default_theta: float) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from either the classic fields or transformers v5's rope_parameters."""
    params = _get(d, "rope_parameters", source, {})
    theta = _get(d, "rope_theta", source, _get(params, "rope_theta", source, float(default_theta)))
    scaling = _get(d, "rope_scaling", source, {}) or None
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling is not None:
        scaling = dict(scaling)
        kind = scaling.pop("rope_type", None) or scaling.pop("type", None)
        if kind in (None, "default"):
            scaling = None
        else:
            scaling["type"] = kind
    return float(theta), scaling


def _mixtral(d: dict, source: str) -> Config:
    theta, scaling = _rope(d, source, 1e6)
    n_heads = _get(d, "num_attention_heads", source)
    hidden = _get(d, "hidden_size", source)
    return Config(
        vocab_size=_get(d, "vocab_size", source),
        d_model=hidden,
        n_layers=_get(d, "num_hidden_layers", source),
        n_heads=n_heads,
        n_kv_heads=_get(d, "num_key_value_heads", source, n_heads),
        head_dim=_get(d, "head_dim", source, None),
        d_ff=_get(d, "intermediate_size", source),
        max_seq_len=_get(d, "max_position_embeddings", source, 4096 * 32),
        n_experts=_get(d, "num_local_experts", source, 8),
        top_k=_get(d, "num_experts_per_tok", source, 2),
        router="softmax_topk", router_renorm=True,
        sliding_window=_get(d, "sliding_window", source, 0) or 0,
        rope_theta=theta, rope_scaling=scaling,
        norm_eps=_get(d, "rms_norm_eps", source, 1e-5),
        tie_embeddings=_get(d, "tie_word_embeddings", source, False),
        name=_name(d, "mixtral"),
    )


def _unsupported(d: dict, source: str, key: str, supported, why: str):
    """Refuse, by family and field name, a value that minimoe does not implement."""
    value = d.get(key)
    if value is not None and value != supported:
        family = d.get("model_type", "this model")
        raise ConfigError(f"{source}: {family}: {key}={value!r} is not supported ({why}); "
                          f"expected {supported!r}")


# The defaults of each family's transformers config class (transformers 5.x), for the fields that
# every family spells the same way: (vocab_size, hidden_size, num_hidden_layers, num_attention_heads,
# num_key_value_heads (None: = num_attention_heads), max_position_embeddings, rope_theta, rms_norm_eps).
_DEFAULTS = {
    "gpt_oss": (201088, 2880, 36, 64, 8, 131072, 150000.0, 1e-5),
    "qwen2_moe": (151936, 2048, 24, 16, 16, 32768, 10000.0, 1e-6),
    "qwen3_moe": (151936, 2048, 24, 32, 4, 32768, 10000.0, 1e-6),
    "olmoe": (50304, 2048, 16, 16, None, 4096, 10000.0, 1e-5),
    "deepseek_v3": (129280, 7168, 61, 128, 128, 4096, 10000.0, 1e-6),
    "llama": (32000, 4096, 32, 32, None, 2048, 10000.0, 1e-6),
    "llama4_text": (202048, 5120, 48, 40, 8, 131072, 500000.0, 1e-5),
    "qwen3_next": (151936, 2048, 48, 16, 2, 32768, 10000.0, 1e-6),
    "glm4_moe": (151552, 4096, 46, 96, 8, 131072, 10000.0, 1e-5),
    "deepseek_v2": (102400, 4096, 32, 32, None, 2048, 10000.0, 1e-6),
    "granitemoe": (32000, 4096, 32, 32, None, 2048, 10000.0, 1e-6),
    "phimoe": (32064, 4096, 32, 32, 8, 131072, 1e6, 1e-5),
}


def _common(d: dict, source: str, family: str) -> dict:
    """The fields every family spells the same way, with its transformers class's defaults."""
    vocab, hidden, layers, heads, kv_heads, max_pos, theta, eps = _DEFAULTS[family]
    theta, scaling = _rope(d, source, theta)
    n_heads = _get(d, "num_attention_heads", source, heads)
    return dict(
        vocab_size=_get(d, "vocab_size", source, vocab),
        d_model=_get(d, "hidden_size", source, hidden),
        n_layers=_get(d, "num_hidden_layers", source, layers),
        n_heads=n_heads,
        n_kv_heads=_get(d, "num_key_value_heads", source, kv_heads or n_heads),
        max_seq_len=_get(d, "max_position_embeddings", source, max_pos),
        rope_theta=theta, rope_scaling=scaling,
        norm_eps=_get(d, "rms_norm_eps", source, eps),
        tie_embeddings=_get(d, "tie_word_embeddings", source, False),
    )


def _gpt_oss(d: dict, source: str) -> Config:
    # transformers' GptOssConfig: attention_bias (q, k, v and o) defaults to True; every layer has
    # sinks, a router with a bias and experts with biases; layer_types defaults to sliding on even layers.
    c = _common(d, source, "gpt_oss")
    n_layers = c["n_layers"]
    layer_types = _get(d, "layer_types", source,
                       ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)])
    if not isinstance(layer_types, list) or len(layer_types) != n_layers:
        raise ConfigError(f"{source}: layer_types must be a list of num_hidden_layers={n_layers} "
                          f"entries, found {layer_types!r}")
    window = _get(d, "sliding_window", source, 128) or 0
    if c["rope_scaling"] is None and "rope_scaling" not in d and "rope_parameters" not in d:
        c["rope_scaling"] = {"type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                             "truncate": False, "original_max_position_embeddings": 4096}
    bias = _get(d, "attention_bias", source, True)
    f = _get(d, "intermediate_size", source, 2880)
    return Config(
        **c, head_dim=_get(d, "head_dim", source, 64),
        d_ff=f, d_expert=f,
        n_experts=_get(d, ("num_local_experts", "num_experts"), source, 128),
        top_k=_get(d, "num_experts_per_tok", source, 4),
        router="topk_softmax", router_bias=True, expert_bias=True,
        qkv_bias=bias, o_bias=bias, attn_sinks=True,
        sliding_window=window,
        sliding_layers=[i for i, t in enumerate(layer_types) if t == "sliding_attention"] if window else None,
        ffn_act="swiglu_oai",
        swiglu_limit=float(_get(d, "swiglu_limit", source, 7.0)),
        swiglu_alpha=float(_get(d, "swiglu_alpha", source, 1.702)),
        name=_name(d, "gpt_oss"),
    )


def _qwen_moe_layers(d: dict, source: str, n_layers: int, n_experts: int) -> list[int]:
    """Qwen2/3-MoE: the layers with a dense FFN (mlp_only_layers, or off the decoder_sparse_step)."""
    if n_experts == 0:
        return list(range(n_layers))
    mlp_only = _get(d, "mlp_only_layers", source, [])
    step = _get(d, "decoder_sparse_step", source, 1)
    if step < 1:
        raise ConfigError(f"{source}: decoder_sparse_step must be at least 1, found {step}")
    return [i for i in range(n_layers) if i in mlp_only or (i + 1) % step != 0]


def _qwen2_moe(d: dict, source: str) -> Config:
    # transformers' Qwen2MoeConfig: qkv_bias (q, k, v; never o) defaults to True; one shared expert
    # of width shared_expert_intermediate_size with a sigmoid gate; top-k without renormalisation.
    c = _common(d, source, "qwen2_moe")
    n_experts = _get(d, "num_experts", source, 60)
    layers = _qwen_moe_layers(d, source, c["n_layers"], n_experts)
    qkv_bias = _get(d, "qkv_bias", source, True)
    window = (_get(d, "sliding_window", source, 4096) or 0) if _get(d, "use_sliding_window", source, False) else 0
    max_window_layers = _get(d, "max_window_layers", source, 28)
    layer_types = _get(d, "layer_types", source, []) or [
        "sliding_attention" if (i + 1) % 2 and i < max_window_layers and window else "full_attention"
        for i in range(c["n_layers"])]
    sliding = [i for i, t in enumerate(layer_types) if t == "sliding_attention"] if window else []
    attn = dict(qkv_bias=qkv_bias, o_bias=False, sliding_window=window if sliding else 0,
                sliding_layers=sliding or None)
    if len(layers) == c["n_layers"]:
        return _dense(d, source, c, "qwen2_moe", 5632, **attn)
    return Config(
        **c, **attn, head_dim=_get(d, "head_dim", source, None),
        d_ff=_get(d, "intermediate_size", source, 5632),
        n_experts=n_experts, top_k=_get(d, "num_experts_per_tok", source, 4),
        d_expert=_get(d, "moe_intermediate_size", source, 1408),
        n_shared_experts=1, d_shared_expert=_get(d, "shared_expert_intermediate_size", source, 5632),
        shared_expert_gate=True, dense_layers=layers,
        router="softmax_topk", router_renorm=_get(d, "norm_topk_prob", source, False),
        name=_name(d, "qwen2_moe"),
    )


def _dense(d: dict, source: str, c: dict, family: str, d_ff_default: int, **extra) -> Config:
    """A model of an MoE family whose every layer is dense (num_experts 0, or all mlp_only)."""
    extra.setdefault("head_dim", _get(d, "head_dim", source, None))
    return Config(**c, d_ff=_get(d, "intermediate_size", source, d_ff_default),
                  name=_name(d, family), **extra)


def _qwen3_moe(d: dict, source: str) -> Config:
    # transformers' Qwen3MoeConfig: attention_bias (q, k, v and o) defaults to False; q/k RMSNorm
    # over each head's D channels; no shared expert.
    c = _common(d, source, "qwen3_moe")
    n_experts = _get(d, ("num_experts", "num_local_experts"), source, 128)
    layers = _qwen_moe_layers(d, source, c["n_layers"], n_experts)
    bias = _get(d, "attention_bias", source, False)
    window = (_get(d, "sliding_window", source, 4096) or 0) if _get(d, "use_sliding_window", source, False) else 0
    if len(layers) == c["n_layers"]:
        return _dense(d, source, c, "qwen3_moe", 6144, qkv_bias=bias, o_bias=bias, qk_norm="head",
                      sliding_window=window)
    return Config(
        **c, head_dim=_get(d, "head_dim", source, None),
        d_ff=_get(d, "intermediate_size", source, 6144),
        n_experts=n_experts, top_k=_get(d, "num_experts_per_tok", source, 8),
        d_expert=_get(d, "moe_intermediate_size", source, 768), dense_layers=layers,
        router="softmax_topk", router_renorm=_get(d, "norm_topk_prob", source, False),
        qkv_bias=bias, o_bias=bias, qk_norm="head", sliding_window=window,
        name=_name(d, "qwen3_moe"),
    )


def _olmoe(d: dict, source: str) -> Config:
    # transformers' OlmoeConfig: q/k RMSNorm over the full projection width (H*D and G*D);
    # attention_bias defaults to False; top-k without renormalisation by default.
    c = _common(d, source, "olmoe")
    head_dim = c["d_model"] // c["n_heads"]
    _unsupported(d, source, "head_dim", head_dim,
                 "OLMoE's q_norm is sized by hidden_size, so heads must split the width exactly")
    bias = _get(d, "attention_bias", source, False)
    f = _get(d, "intermediate_size", source, 2048)
    return Config(
        **c, head_dim=head_dim, d_ff=f, d_expert=f,
        n_experts=_get(d, ("num_experts", "num_local_experts"), source, 64), top_k=_get(d, "num_experts_per_tok", source, 8),
        router="softmax_topk", router_renorm=_get(d, "norm_topk_prob", source, False),
        qkv_bias=bias, o_bias=bias, qk_norm="full",
        name=_name(d, "olmoe"),
    )


def _mla(d: dict, source: str, c: dict, q_lora_default) -> dict:
    """The multi-head latent attention fields DeepSeek-V2 and V3 share."""
    _unsupported(d, source, "attention_bias", False, "no released DeepSeek model uses attention biases")
    if c["n_kv_heads"] != c["n_heads"]:
        raise ConfigError(f"{source}: {d.get('model_type')}: num_key_value_heads={c['n_kv_heads']} is not "
                          f"supported (latent attention decompresses every head's key and value; "
                          f"expected num_attention_heads={c['n_heads']})")
    q_lora = _get(d, "q_lora_rank", source, None) if "q_lora_rank" in d else q_lora_default
    rope, nope = _get(d, "qk_rope_head_dim", source, 64), _get(d, "qk_nope_head_dim", source, 128)
    return dict(attention="mla", head_dim=rope + nope, q_lora_rank=q_lora or 0,
                kv_lora_rank=_get(d, "kv_lora_rank", source, 512), qk_rope_head_dim=rope,
                qk_nope_head_dim=nope, v_head_dim=_get(d, "v_head_dim", source, 128))


def _deepseek_v3(d: dict, source: str) -> Config:
    # transformers' DeepseekV3Config: multi-head latent attention with interleaved rotary pairs
    # (rope_interleave); the first first_k_dense_replace layers have a dense FFN of
    # intermediate_size; the others n_routed_experts experts of moe_intermediate_size plus
    # n_shared_experts shared ones; a sigmoid router, group-limited (n_group, topk_group), whose
    # e_score_correction_bias only chooses experts. That bias is a buffer, not a parameter. The
    # num_nextn_predict_layers multi-token-prediction layers (default 1) are in the checkpoint but
    # not in the model: the estimator counts them apart (n_mtp_layers). Kimi K2 (model_type
    # "kimi_k2") is this class.
    c = _common(d, source, "deepseek_v3")
    _unsupported(d, source, "moe_layer_freq", 1, "every layer after first_k_dense_replace is an MoE layer")
    n_experts = _get(d, ("n_routed_experts", "num_local_experts"), source, 256)
    first_dense = _get(d, "first_k_dense_replace", source, 3)
    return Config(
        **c, **_mla(d, source, c, 1536),
        rope_interleave=_get(d, "rope_interleave", source, True),
        d_ff=_get(d, "intermediate_size", source, 18432),
        n_experts=n_experts, top_k=_get(d, "num_experts_per_tok", source, 8),
        d_expert=_get(d, "moe_intermediate_size", source, 2048),
        n_shared_experts=_get(d, "n_shared_experts", source, 1),
        dense_layers=list(range(min(first_dense, c["n_layers"]))),
        router="sigmoid_topk", router_renorm=_get(d, "norm_topk_prob", source, True),
        router_scale=float(_get(d, "routed_scaling_factor", source, 2.5)),
        router_groups=_get(d, "n_group", source, 8), router_topk_groups=_get(d, "topk_group", source, 4),
        router_correction_bias=True,
        n_mtp_layers=_get(d, ("num_nextn_predict_layers", "num_mtp_layers"), source, 1),
        name=_name(d, d["model_type"]),
    )



def _llama(d: dict, source: str) -> Config:
    # transformers' LlamaConfig: attention_bias (q, k, v and o) defaults to False.
    c = _common(d, source, "llama")
    _unsupported(d, source, "mlp_bias", False, "minimoe's dense FFN has no biases")
    bias = _get(d, "attention_bias", source, False)
    return Config(
        **c, head_dim=_get(d, "head_dim", source, None),
        d_ff=_get(d, "intermediate_size", source, 11008), qkv_bias=bias, o_bias=bias,
        name=_name(d, "llama"),
    )


def _deepseek_v2(d: dict, source: str) -> Config:
    # transformers' DeepseekV2Config: the same latent attention, rotated as complex numbers on
    # interleaved pairs (the same as rope_interleave); a softmax router, "greedy" (plain top-k) or
    # "group_limited_greedy" (a group's rank is its best score), never renormalised, times
    # routed_scaling_factor; n_shared_experts shared experts; first_k_dense_replace dense layers.
    c = _common(d, source, "deepseek_v2")
    _unsupported(d, source, "mlp_bias", False, "minimoe's FFNs have no biases")
    _unsupported(d, source, "moe_layer_freq", 1, "every layer after first_k_dense_replace is an MoE layer")
    method = _get(d, "topk_method", source, "greedy")
    if method not in ("greedy", "group_limited_greedy"):
        raise ConfigError(f"{source}: deepseek_v2: topk_method={method!r} is not supported; expected "
                          f"'greedy' or 'group_limited_greedy'")
    groups = (_get(d, "n_group", source), _get(d, "topk_group", source)) if method != "greedy" else (1, 1)
    n_experts = _get(d, ("n_routed_experts", "num_experts"), source, 64)
    first_dense = _get(d, "first_k_dense_replace", source, 0)
    return Config(
        **c, **_mla(d, source, c, 1536), rope_interleave=True,
        d_ff=_get(d, "intermediate_size", source, 11008),
        n_experts=n_experts, top_k=_get(d, "num_experts_per_tok", source),
        d_expert=_get(d, "moe_intermediate_size", source, 1407),
        n_shared_experts=_get(d, "n_shared_experts", source, 2),
        dense_layers=list(range(min(first_dense, c["n_layers"]))),
        router="softmax_topk", router_renorm=False,
        router_scale=float(_get(d, "routed_scaling_factor", source, 1.0)),
        router_groups=groups[0], router_topk_groups=groups[1],
        name=_name(d, "deepseek_v2"),
    )



def _layer_types(d: dict, source: str, n_layers: int, default: list[str]) -> list[str]:
    """The config's layer_types (one entry per layer), or the family's default pattern."""
    layer_types = d.get("layer_types") or default
    if not isinstance(layer_types, list) or len(layer_types) != n_layers:
        raise ConfigError(f"{source}: layer_types must be a list of num_hidden_layers={n_layers} "
                          f"entries, found {layer_types!r}")
    return layer_types


def _llama4(d: dict, source: str) -> Config:
    # transformers' Llama4Config holds the text model's config in text_config; AutoModelForCausalLM
    # builds the text model alone, so the vision tower beside it is not counted.
    text = _get(d, "text_config", source)
    if not isinstance(text, dict):
        raise ConfigError(f"{source}: text_config must be a JSON object, found {type(text).__name__}")
    return _llama4_text(text, f"{source} text_config")


def _llama4_text(d: dict, source: str) -> Config:
    # transformers' Llama4TextConfig: the layers in moe_layers (default: every
    # interleave_moe_layer_step-th) have num_local_experts experts of intermediate_size and a
    # shared expert of the same width; the others a dense FFN of intermediate_size_mlp. The router
    # scales each token by the sigmoid of its top-K logits (no renormalisation). Every
    # no_rope_layer_interval-th layer is a NoPE layer with full attention; the others use RoPE and
    # attend within chunks of attention_chunk_size (null: no chunks). NoPE and use_qk_norm (an L2
    # norm) have no parameters and no cache, so neither is represented.
    c = _common(d, source, "llama4_text")
    n = c["n_layers"]
    step = _get(d, "interleave_moe_layer_step", source, 1)
    moe_layers = _get(d, "moe_layers", source, list(range(step - 1, n, step)))
    interval = _get(d, "no_rope_layer_interval", source, 4)
    rope = d.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n)]   # 1: RoPE
    chunk = d.get("attention_chunk_size", 8192) or 0
    types = _layer_types(d, source, n, ["chunked_attention" if r and chunk else "full_attention" for r in rope])
    bias = _get(d, "attention_bias", source, False)
    f = _get(d, "intermediate_size", source, 8192)
    return Config(
        **c, head_dim=d.get("head_dim", 128), d_ff=_get(d, "intermediate_size_mlp", source, 16384),
        n_experts=_get(d, "num_local_experts", source, 16), top_k=_get(d, "num_experts_per_tok", source, 1),
        d_expert=f, n_shared_experts=1, d_shared_expert=f,
        dense_layers=[i for i in range(n) if i not in moe_layers],
        router="sigmoid_topk", router_renorm=False, qkv_bias=bias, o_bias=bias,
        attention_chunk_size=chunk,
        chunked_layers=[i for i, t in enumerate(types) if t == "chunked_attention"] if chunk else None,
        name=_name(d, "llama4"),
    )


def _qwen3_next(d: dict, source: str) -> Config:
    # transformers' Qwen3NextConfig: layer_types, or by default full attention on every
    # full_attention_interval-th layer and Gated DeltaNet linear attention on the others. The
    # full-attention layers project q with a gate (2*H*D rows), norm q and k per head and carry
    # attention_bias on q, k, v and o. The FFN is Qwen2-MoE's: a shared expert with a sigmoid gate,
    # decoder_sparse_step and mlp_only_layers. partial_rotary_factor changes no parameter.
    c = _common(d, source, "qwen3_next")
    n = c["n_layers"]
    interval = _get(d, "full_attention_interval", source, 4)
    types = _layer_types(d, source, n, ["linear_attention" if (i + 1) % interval else "full_attention"
                                        for i in range(n)])
    n_experts = _get(d, "num_experts", source, 512)
    layers = _qwen_moe_layers(d, source, n, n_experts)
    bias = _get(d, "attention_bias", source, False)
    attn = dict(
        qkv_bias=bias, o_bias=bias, qk_norm="head", attn_output_gate=True,
        linear_layers=[i for i, t in enumerate(types) if t == "linear_attention"],
        linear_num_key_heads=_get(d, "linear_num_key_heads", source, 16),
        linear_num_value_heads=_get(d, "linear_num_value_heads", source, 32),
        linear_key_head_dim=_get(d, "linear_key_head_dim", source, 128),
        linear_value_head_dim=_get(d, "linear_value_head_dim", source, 128),
        linear_conv_kernel=_get(d, "linear_conv_kernel_dim", source, 4),
        head_dim=_get(d, "head_dim", source, 256))
    if len(layers) == n:
        return _dense(d, source, c, "qwen3_next", 5632, **attn)
    return Config(
        **c, **attn, d_ff=_get(d, "intermediate_size", source, 5632),
        n_experts=n_experts, top_k=_get(d, "num_experts_per_tok", source, 10),
        d_expert=_get(d, "moe_intermediate_size", source, 512),
        n_shared_experts=1, d_shared_expert=_get(d, "shared_expert_intermediate_size", source, 512),
        shared_expert_gate=True, dense_layers=layers,
        router="softmax_topk", router_renorm=_get(d, "norm_topk_prob", source, True),
        name=_name(d, "qwen3_next"),
    )


def _glm4_moe(d: dict, source: str) -> Config:
    # transformers' Glm4MoeConfig: attention_bias on q, k and v (never o); per-head q/k RMSNorm with
    # use_qk_norm; the first first_k_dense_replace layers dense (intermediate_size), the others
    # n_routed_experts experts of moe_intermediate_size plus n_shared_experts shared ones; a sigmoid
    # router whose selection bias (e_score_correction_bias) is a buffer, not a parameter. The
    # num_nextn_predict_layers MTP layers (default 1) are in the checkpoint but not in the model.
    # partial_rotary_factor changes no parameter.
    c = _common(d, source, "glm4_moe")
    first_dense = _get(d, "first_k_dense_replace", source, 1)
    return Config(
        **c, head_dim=_get(d, "head_dim", source, None),
        d_ff=_get(d, "intermediate_size", source, 10944),
        n_experts=_get(d, "n_routed_experts", source, 128), top_k=_get(d, "num_experts_per_tok", source, 8),
        d_expert=_get(d, "moe_intermediate_size", source, 1408),
        n_shared_experts=_get(d, "n_shared_experts", source, 1),
        dense_layers=list(range(min(first_dense, c["n_layers"]))),
        router="sigmoid_topk", router_renorm=_get(d, "norm_topk_prob", source, True),
        router_scale=float(_get(d, "routed_scaling_factor", source, 1.0)),
        qkv_bias=_get(d, "attention_bias", source, False), o_bias=False,
        qk_norm="head" if _get(d, "use_qk_norm", source, False) else "none",
        n_mtp_layers=_get(d, "num_nextn_predict_layers", source, 1),
        name=_name(d, "glm4_moe"),
    )


def _granitemoe(d: dict, source: str) -> Config:
    # transformers' GraniteMoeConfig: top-k then a softmax over the K logits. The muP multipliers
    # (embedding_multiplier, residual_multiplier, attention_multiplier, logits_scaling) scale
    # activations and change no parameter.
    return _local_experts(d, source, "granitemoe", 11008, 8, router="topk_softmax")


def _phimoe(d: dict, source: str) -> Config:
    # transformers' PhimoeConfig: LayerNorm (a scale and a bias) for every norm, a bias on the head
    # with lm_head_bias, sparsemixer top-2 routing, and a sliding window when sliding_window is set
    # (Phi-3.5-MoE's 131072 is its whole context).
    return _local_experts(d, source, "phimoe", 6400, 16, router="sparsemixer", norm="layernorm",
                          head_bias=_get(d, "lm_head_bias", source, False),
                          sliding_window=_get(d, "sliding_window", source, 0) or 0)


def _local_experts(d: dict, source: str, family: str, d_ff_default: int, experts_default: int,
                   **extra) -> Config:
    """Granite MoE and Phi-3.5-MoE: num_local_experts experts of intermediate_size, top-k through
    a bias-free router, attention_bias on q, k, v and o."""
    c = _common(d, source, family)
    bias = _get(d, "attention_bias", source, False)
    f = _get(d, "intermediate_size", source, d_ff_default)
    return Config(
        **c, d_ff=f, d_expert=f, n_experts=_get(d, "num_local_experts", source, experts_default),
        top_k=_get(d, "num_experts_per_tok", source, 2), qkv_bias=bias, o_bias=bias,
        name=_name(d, family), **extra)


CONVERTERS = {
    "mixtral": _mixtral,
    "gpt_oss": _gpt_oss,
    "qwen2_moe": _qwen2_moe,
    "qwen3_moe": _qwen3_moe,
    "olmoe": _olmoe,
    "deepseek_v3": _deepseek_v3,
    "kimi_k2": _deepseek_v3,       # Kimi K2's config.json: architectures ["DeepseekV3ForCausalLM"]
    "llama": _llama,
    "llama4": _llama4,
    "llama4_text": _llama4_text,
    "qwen3_next": _qwen3_next,
    "glm4_moe": _glm4_moe,
    "deepseek_v2": _deepseek_v2,
    "granitemoe": _granitemoe,
    "phimoe": _phimoe,
}


def config_from_hf(d: dict, source: str = "config.json") -> Config:
    """Convert a Hugging Face config dict (the contents of config.json) to a Config."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a JSON object, found {type(d).__name__}")
    model_type = d.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONVERTERS:
        raise ConfigError(f"{source}: unknown model_type {model_type!r}; minimoe reads "
                          f"{sorted(CONVERTERS)} (and its own 'minimoe')")
    try:
        return CONVERTERS[model_type](d, source)
    except (ConfigError, TypeError, ValueError, ArithmeticError, AttributeError, LookupError) as e:   # a field of the wrong type
        msg = str(e)
        raise ConfigError(msg if msg.startswith(source) else f"{source}: {msg}") from None
