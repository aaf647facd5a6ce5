"""Hugging Face `config.json` -> minimoe Config, one small converter per model family.

Each converter reads the fields its family's transformers class reads, with the same defaults,
and says which field is missing or unsupported by name. Add a family by adding a converter to
CONVERTERS.
"""
from __future__ import annotations

from minimoe.config import Config, ConfigError


def _get(d: dict, key: str, source: str, default=...):
    if key in d and d[key] is not None:
        return d[key]
    if default is ...:
        raise ConfigError(f"{source}: missing field {key!r}")
    return default


def _rope(d: dict, source: str, default_theta: float) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from either the classic fields or transformers v5's rope_parameters."""
    params = d.get("rope_parameters") or {}
    theta = d.get("rope_theta", params.get("rope_theta", default_theta))
    scaling = d.get("rope_scaling") or None
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
        tie_embeddings=bool(_get(d, "tie_word_embeddings", source, False)),
        name=d.get("_name_or_path", "") or "mixtral",
    )


CONVERTERS = {
    "mixtral": _mixtral,
}


def config_from_hf(d: dict, source: str = "config.json") -> Config:
    """Convert a Hugging Face config dict (the contents of config.json) to a Config."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a JSON object, found {type(d).__name__}")
    model_type = d.get("model_type")
    if model_type not in CONVERTERS:
        raise ConfigError(f"{source}: unknown model_type {model_type!r}; minimoe reads "
                          f"{sorted(CONVERTERS)} (and its own 'minimoe')")
    return CONVERTERS[model_type](d, source)
