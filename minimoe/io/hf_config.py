"""Hugging Face `config.json` -> minimoe Config, one small converter per model family.

Each converter reads the fields its family's transformers class reads, with the same defaults,
and says which field is missing or unsupported by name. Add a family by adding a converter to
CONVERTERS.
"""
from __future__ import annotations

from minimoe.config import Config, ConfigError


def _get(d: dict, key: str, source: str, default=...):
    """d[key], or `default` when it is absent or null (no default: the field is required).
    The value must have the JSON type of the default: a number for a number, true/false for a
    bool, a list for a list (so "false" is not read as true, nor "64" as a width); the fields
    that are required or default to null are all sizes, so integers."""
    if key not in d or d[key] is None:
        if default is ...:
            raise ConfigError(f"{source}: missing field {key!r}")
        return default
    value = d[key]
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, (list, dict)):
        ok, kind = isinstance(value, type(default)), f"a JSON {'array' if isinstance(default, list) else 'object'}"
    else:                                                   # required, or null by default: a size
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
    if not ok:
        raise ConfigError(f"{source}: {key} must be {kind}, found {value!r}")
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
    """Refuse, by name, a field value that would change the parameter count in a way minimoe can't express."""
    value = d.get(key)
    if value is not None and value != supported:
        raise ConfigError(f"{source}: {key}={value!r} is not supported ({why}); expected {supported!r}")


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
        n_experts=_get(d, "num_local_experts", source, 128),
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
    return Config(**c, head_dim=_get(d, "head_dim", source, None),
                  d_ff=_get(d, "intermediate_size", source, d_ff_default),
                  name=_name(d, family), **extra)


def _qwen3_moe(d: dict, source: str) -> Config:
    # transformers' Qwen3MoeConfig: attention_bias (q, k, v and o) defaults to False; q/k RMSNorm
    # over each head's D channels; no shared expert.
    c = _common(d, source, "qwen3_moe")
    n_experts = _get(d, "num_experts", source, 128)
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
        n_experts=_get(d, "num_experts", source, 64), top_k=_get(d, "num_experts_per_tok", source, 8),
        router="softmax_topk", router_renorm=_get(d, "norm_topk_prob", source, False),
        qkv_bias=bias, o_bias=bias, qk_norm="full",
        name=_name(d, "olmoe"),
    )


def _deepseek_v3(d: dict, source: str) -> Config:
    # transformers' DeepseekV3Config: multi-head latent attention; the first first_k_dense_replace
    # layers have a dense FFN of intermediate_size; the others n_routed_experts experts of
    # moe_intermediate_size plus n_shared_experts shared ones; a sigmoid router. The router's
    # e_score_correction_bias is a buffer, not a parameter, and the multi-token-prediction layer
    # (num_nextn_predict_layers) is not built, so neither is counted.
    c = _common(d, source, "deepseek_v3")
    _unsupported(d, source, "attention_bias", False, "no released DeepSeek-V3 uses attention biases")
    q_lora = _get(d, "q_lora_rank", source, None) if "q_lora_rank" in d else 1536
    n_experts = _get(d, "n_routed_experts", source, 256)
    first_dense = _get(d, "first_k_dense_replace", source, 3)
    rope, nope = _get(d, "qk_rope_head_dim", source, 64), _get(d, "qk_nope_head_dim", source, 128)
    return Config(
        **c, head_dim=rope + nope,
        d_ff=_get(d, "intermediate_size", source, 18432),
        n_experts=n_experts, top_k=_get(d, "num_experts_per_tok", source, 8),
        d_expert=_get(d, "moe_intermediate_size", source, 2048),
        n_shared_experts=_get(d, "n_shared_experts", source, 1),
        dense_layers=list(range(min(first_dense, c["n_layers"]))),
        router="sigmoid_topk", router_renorm=_get(d, "norm_topk_prob", source, True),
        router_scale=float(_get(d, "routed_scaling_factor", source, 2.5)),
        attention="mla", q_lora_rank=q_lora or 0, kv_lora_rank=_get(d, "kv_lora_rank", source, 512),
        qk_rope_head_dim=rope, qk_nope_head_dim=nope, v_head_dim=_get(d, "v_head_dim", source, 128),
        name=_name(d, "deepseek_v3"),
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


CONVERTERS = {
    "mixtral": _mixtral,
    "gpt_oss": _gpt_oss,
    "qwen2_moe": _qwen2_moe,
    "qwen3_moe": _qwen3_moe,
    "olmoe": _olmoe,
    "deepseek_v3": _deepseek_v3,
    "llama": _llama,
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
    except (ConfigError, TypeError, ValueError, ArithmeticError) as e:   # a field of the wrong type or value
        msg = str(e)
        raise ConfigError(msg if msg.startswith(source) else f"{source}: {msg}") from None
