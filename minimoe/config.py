"""The model configuration: one validated dataclass that describes every architecture minimoe knows.

Shape legend (used across minimoe):
    B batch, T time, C model width (d_model), H query heads, G kv heads, D head dim,
    F ffn width (d_ff or d_expert), E routed experts, K top-k, V vocab.

A Config is plain data. It round-trips through JSON (`to_dict`/`from_dict`, `save`/`load`),
and `Config.preset(name)` returns a named one (see minimoe/presets.py).

The fields cover the families minimoe runs or estimates:
    Mixtral         softmax router, top-k, renormalised; SwiGLU experts; GQA
    gpt-oss         top-k then softmax; router bias; attention biases and sinks;
                    alternating sliding-window layers; clamped SwiGLU with biases; YaRN RoPE
    Qwen2-MoE       softmax router, no renormalisation; a shared expert with a sigmoid gate
    Qwen3-MoE       per-head q/k RMSNorm; renormalised top-k
    OLMoE           full-width q/k RMSNorm; no renormalisation
    DeepSeek-V3     multi-head latent attention (MLA) with interleaved rope pairs; a sigmoid router
                    whose selection bias only chooses experts, group-limited top-k, a routed
                    scaling factor; a shared expert; dense first layers; multi-token-prediction
                    (MTP) layers (estimated only); Kimi K2 too
    DeepSeek-V2     the same MLA; a softmax router, greedy or group-limited (best score per group)
    Llama 3.1       dense; llama3 RoPE scaling
    Llama 4         MoE and dense layers interleaved, a shared expert, chunked attention
    Qwen3-Next      Gated DeltaNet (linear attention) on 3 layers in 4, gated attention on the others
    GLM-4.5         q/k/v biases, per-head q/k norms, a sigmoid router, dense first layers, MTP
    Granite MoE     tied embeddings;  Phi-3.5-MoE  LayerNorm, a head bias, sparsemixer routing
The families after Llama 3.1 are described for the estimator; `Config.estimator_only()` names what
in a config minimoe's Model does not run.

For routing research (docs/routing.md) the model also runs noisy top-k and expert-choice routers,
a capacity factor with token dropping (training and evaluation apart), and DeepSeek-V3's selection
bias (`router_correction_bias`) with a softmax router as well as a sigmoid one.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any


from minimoe.errors import MinimoeError


class ConfigError(MinimoeError, ValueError):
    """An invalid configuration. The message names the field, what was expected and what was found."""


ROUTERS = ("softmax_topk", "topk_softmax", "sigmoid_topk", "sparsemixer", "noisy_topk", "expert_choice")
DROP_POLICIES = ("score", "position")
QK_NORMS = ("none", "head", "full")
FFN_ACTS = ("swiglu", "swiglu_oai")
ATTENTIONS = ("gqa", "mla")
NORMS = ("rmsnorm", "layernorm")
ROPE_SCALINGS = ("linear", "llama3", "yarn", "longrope")
MAX_SIZE = 2**24                 # bound on every size field, max_seq_len included: a sanity check
                                 # (real models stay far below: 10M context, 262k vocabularies) that
                                 # refuses a corrupt config before anything is allocated from it
FLOAT32_MAX = 3.4028234663852886e38   # the largest float32: a bigger number would become inf
ROPE_NUMBERS = ("factor", "low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow",
                "attention_factor", "mscale", "mscale_all_dim")


@dataclass
class Config:
    # --- sizes -------------------------------------------------------------------------------
    vocab_size: int = 256            # V
    d_model: int = 64                # C
    n_layers: int = 2
    n_heads: int = 4                 # H, query heads
    n_kv_heads: int | None = None    # G, key/value heads (grouped-query attention); None -> n_heads
    head_dim: int | None = None      # D; None -> d_model // n_heads (which must divide)
    d_ff: int = 256                  # F of the dense SwiGLU FFN
    max_seq_len: int = 256           # longest context the model is used with

    # --- mixture of experts ------------------------------------------------------------------
    n_experts: int = 0               # E routed experts; 0 means a dense model
    top_k: int = 0                   # K experts per token
    d_expert: int | None = None      # F of each routed expert; None -> d_ff
    n_shared_experts: int = 0        # experts every token goes through (DeepSeek, Qwen2-MoE)
    d_shared_expert: int | None = None  # F of each shared expert; None -> d_expert
    shared_expert_gate: bool = False    # Qwen2-MoE: shared output scaled by sigmoid(x @ w)
    dense_layers: list[int] = field(default_factory=list)  # MoE models: layers with a dense FFN
    router: str = "softmax_topk"     # one of ROUTERS, see minimoe/nn/router.py ("sparsemixer":
                                     # Phi-3.5-MoE's, estimator only; "noisy_topk" and
                                     # "expert_choice": training-time routers; with expert_choice,
                                     # top_k is the average number of experts per token)
    router_renorm: bool = True       # softmax_topk/sigmoid_topk: rescale the K weights to sum to 1
    router_bias: bool = False        # a learned bias on the router logits (gpt-oss)
    router_scale: float = 1.0        # DeepSeek's routed_scaling_factor, multiplies the K weights
    router_groups: int = 1           # DeepSeek n_group: the E experts form this many equal groups
    router_topk_groups: int = 1      # DeepSeek topk_group: each token picks from its best groups only
    router_correction_bias: bool = False  # DeepSeek-V3 e_score_correction_bias: added to the scores to
                                          # choose the experts, never to weigh them (softmax_topk,
                                          # sigmoid_topk); training's loss-free balancing moves it
    # Capacity (Switch Transformer, GShard): each expert takes at most
    # ceil(factor * T * K / E) of the T tokens of a sequence; the rest of its assignments are
    # dropped, and a token all of whose choices are dropped passes on through the residual.
    capacity_factor: float = 0.0     # during training; 0: no limit (expert_choice: 0 means 1.0)
    eval_capacity_factor: float = 0.0  # evaluation and generation; 0: no limit (expert_choice: 1.0)
    drop_policy: str = "score"       # which assignments an over-full expert keeps: "score" (the
                                     # highest router probabilities) or "position" (the first tokens)
    expert_bias: bool = False        # biases inside the experts (gpt-oss)

    # --- attention ---------------------------------------------------------------------------
    attention: str = "gqa"           # "gqa", or "mla" (DeepSeek's multi-head latent attention)
    qkv_bias: bool = False           # biases on the q, k and v projections
    o_bias: bool = False             # bias on the output projection
    attn_sinks: bool = False         # gpt-oss: one learned logit per head that takes softmax mass
    sliding_window: int = 0          # 0: none; >0: a token sees at most this many keys (itself included)
    sliding_layers: list[int] | None = None  # layers that use the window; None -> all (Mixtral)
    qk_norm: str = "none"            # "none", "head" (Qwen3: RMSNorm over D), "full" (OLMoE: over H*D)
    attn_output_gate: bool = False   # Qwen3-Next: q's projection also yields a sigmoid gate (H*D) on
                                     # the attention output, so it has 2*H*D rows (estimator only)
    attention_chunk_size: int = 0    # Llama 4: a query sees only the keys of its own chunk of this
                                     # many tokens (0: none; estimator only)
    chunked_layers: list[int] | None = None  # layers that use the chunks; None -> all
    # Linear attention (Qwen3-Next's Gated DeltaNet; estimator only): these layers keep a fixed-size
    # state instead of a KV cache. Hk key heads of Dk, Hv value heads of Dv, a causal convolution of
    # linear_conv_kernel taps over q, k and v.
    linear_layers: list[int] = field(default_factory=list)
    linear_num_key_heads: int = 0    # Hk
    linear_num_value_heads: int = 0  # Hv
    linear_key_head_dim: int = 0     # Dk
    linear_value_head_dim: int = 0   # Dv
    linear_conv_kernel: int = 0
    # MLA (DeepSeek-V2/V3) low-rank projections; only read when attention == "mla"
    q_lora_rank: int = 0             # 0: q is a full projection
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    rope_interleave: bool = False    # MLA: rotary pairs are (x0, x1), (x2, x3), ... as DeepSeek stores them

    # --- positions, norms, FFN, embeddings ---------------------------------------------------
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"type": "linear"|"llama3"|"yarn", "factor": ..., ...}
    norm_eps: float = 1e-5
    norm: str = "rmsnorm"            # "layernorm" (Phi-3.5-MoE): every norm has a bias (C,) as well
    ffn_act: str = "swiglu"          # "swiglu" (silu(gate)*up) or "swiglu_oai" (gpt-oss's clamped form)
    swiglu_limit: float = 7.0        # swiglu_oai only
    swiglu_alpha: float = 1.702      # swiglu_oai only
    tie_embeddings: bool = False     # the output head reuses the token embedding
    head_bias: bool = False          # a bias (V,) on the output head (Phi-3.5-MoE)
    # Multi-token prediction (DeepSeek-V3, GLM-4.5): layers the checkpoint stores after the model
    # to draft further tokens. transformers' model does not build them; the estimator counts them
    # apart (and adds them with with_mtp=True). See minimoe.params.mtp_shapes.
    n_mtp_layers: int = 0

    name: str = ""                   # free text: the preset or model this config came from

    # ------------------------------------------------------------------------------------------
    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if _is_pos_int(self.n_heads) and _is_pos_int(self.d_model) and self.d_model % self.n_heads:
                raise ConfigError(
                    f"n_heads={self.n_heads} does not divide d_model={self.d_model}; "
                    f"choose n_heads that divides the width, or set head_dim explicitly")
            if _is_pos_int(self.n_heads) and _is_pos_int(self.d_model):
                self.head_dim = self.d_model // self.n_heads
        if self.d_expert is None:
            self.d_expert = self.d_ff
        if self.d_shared_expert is None:
            self.d_shared_expert = self.d_expert
        _check_layer_list("dense_layers", self.dense_layers)          # types first, then convert
        self.dense_layers = sorted(int(i) for i in self.dense_layers)
        _check_layer_list("linear_layers", self.linear_layers)
        self.linear_layers = sorted(int(i) for i in self.linear_layers)
        for f in ("sliding_layers", "chunked_layers"):
            if getattr(self, f) is not None:
                _check_layer_list(f, getattr(self, f))
                setattr(self, f, sorted(int(i) for i in getattr(self, f)))
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError on the first invalid field or combination."""
        for f in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
                  "max_seq_len"):
            _check_pos_int(f, getattr(self, f))
        for f in ("n_experts", "top_k", "n_shared_experts", "sliding_window", "q_lora_rank",
                  "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim",
                  "attention_chunk_size", "linear_num_key_heads", "linear_num_value_heads",
                  "linear_key_head_dim", "linear_value_head_dim", "linear_conv_kernel", "n_mtp_layers"):
            _check_nonneg_int(f, getattr(self, f))
        for f in dataclasses.fields(self):
            if f.type == "bool" and not isinstance(getattr(self, f.name), bool):
                raise ConfigError(f"{f.name} must be true or false, found {getattr(self, f.name)!r}")
        if not isinstance(self.name, str):
            raise ConfigError(f"name must be a string, found {self.name!r}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_kv_heads={self.n_kv_heads} does not divide n_heads={self.n_heads}; "
                              f"each kv head must serve a whole group of query heads")
        if self.n_experts == 0:
            if self.top_k != 0:
                raise ConfigError(f"top_k={self.top_k} but n_experts=0 (a dense model); set top_k=0 "
                                  f"or n_experts >= top_k")
            if self.n_shared_experts:
                raise ConfigError("n_shared_experts > 0 needs n_experts > 0")
            if self.dense_layers:
                raise ConfigError("dense_layers lists layers of an MoE model, but n_experts=0")
        else:
            if not 1 <= self.top_k <= self.n_experts:
                raise ConfigError(f"top_k must be between 1 and n_experts={self.n_experts}, "
                                  f"found top_k={self.top_k}")
            _check_pos_int("d_expert", self.d_expert)
            if self.n_shared_experts:
                _check_pos_int("d_shared_expert", self.d_shared_expert)
        for f, layers in (("dense_layers", self.dense_layers), ("sliding_layers", self.sliding_layers or []),
                          ("chunked_layers", self.chunked_layers or []), ("linear_layers", self.linear_layers)):
            bad = [i for i in layers if not 0 <= i < self.n_layers]
            if bad:
                raise ConfigError(f"{f} has layer indices {bad} outside 0..{self.n_layers - 1}")
        _check_choice("router", self.router, ROUTERS)
        _check_choice("drop_policy", self.drop_policy, DROP_POLICIES)
        for f in ("capacity_factor", "eval_capacity_factor"):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
                raise ConfigError(f"{f} must be a number >= 0 (0: no capacity limit), found {v!r}")
        if self.router_correction_bias and self.router not in ("softmax_topk", "sigmoid_topk"):
            raise ConfigError(f"router_correction_bias (DeepSeek-V3's e_score_correction_bias) chooses "
                              f"among scores, for router='softmax_topk' or 'sigmoid_topk'; found "
                              f"router={self.router!r}")
        _check_choice("qk_norm", self.qk_norm, QK_NORMS)
        _check_choice("ffn_act", self.ffn_act, FFN_ACTS)
        _check_choice("attention", self.attention, ATTENTIONS)
        _check_choice("norm", self.norm, NORMS)
        if self.attention == "mla":
            for f in ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"):
                _check_pos_int(f, getattr(self, f))
            if self.qk_rope_head_dim % 2:
                raise ConfigError(f"qk_rope_head_dim must be even (RoPE rotates pairs), found {self.qk_rope_head_dim}")
            if self.head_dim != self.qk_nope_head_dim + self.qk_rope_head_dim:
                raise ConfigError(f"attention='mla' needs head_dim = qk_nope_head_dim + qk_rope_head_dim = "
                                  f"{self.qk_nope_head_dim + self.qk_rope_head_dim}, found {self.head_dim}")
            if self.n_kv_heads != self.n_heads:
                raise ConfigError(f"attention='mla' decompresses a key and value for every head: n_kv_heads "
                                  f"must equal n_heads={self.n_heads}, found {self.n_kv_heads}")
            for f, off in (("qk_norm", "none"), ("attn_sinks", False), ("qkv_bias", False), ("sliding_window", 0)):
                if getattr(self, f) != off:
                    raise ConfigError(f"attention='mla' does not implement {f}={getattr(self, f)!r}; "
                                      f"expected {off!r}")
        elif self.rope_interleave:
            raise ConfigError("rope_interleave is only implemented for attention='mla' (DeepSeek)")
        for f in ("router_groups", "router_topk_groups"):
            _check_pos_int(f, getattr(self, f))
        if self.n_experts and self.router_groups > 1:
            E, n = self.n_experts, self.router_groups
            if E % n:
                raise ConfigError(f"router_groups={n} must divide n_experts={E}")
            if self.router_topk_groups > n:
                raise ConfigError(f"router_topk_groups={self.router_topk_groups} must be at most "
                                  f"router_groups={n}")
            if self.top_k > self.router_topk_groups * (E // n):
                raise ConfigError(f"top_k={self.top_k} is more than the {self.router_topk_groups} chosen "
                                  f"groups of {E // n} experts hold")
            if self.router not in ("softmax_topk", "sigmoid_topk"):
                raise ConfigError(f"router_groups > 1 is implemented for softmax_topk and sigmoid_topk, "
                                  f"not {self.router}")
            if self.router == "sigmoid_topk" and E // n < 2:
                raise ConfigError(f"sigmoid_topk ranks a group by its two best experts: groups need at "
                                  f"least 2 experts, found {E // n}")
        for f in ("rope_theta", "norm_eps", "router_scale", "swiglu_limit", "swiglu_alpha"):
            v = getattr(self, f)
            if not _is_number(v) or not 0 < v <= FLOAT32_MAX:      # the model computes in float32
                raise ConfigError(f"{f} must be a positive finite number, found {v!r}")
        if self.rope_scaling is not None:
            self._validate_rope_scaling()
        if self.sliding_layers is not None and self.sliding_window == 0 and self.sliding_layers:
            raise ConfigError("sliding_layers is set but sliding_window is 0")
        if self.chunked_layers and self.attention_chunk_size == 0:
            raise ConfigError("chunked_layers is set but attention_chunk_size is 0")
        both = [i for i in range(self.n_layers) if self.window(i) and self.chunk(i)]
        if both:
            raise ConfigError(f"layers {both} are both sliding and chunked; a layer attends one way")
        if self.linear_layers:
            for f in ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
                      "linear_value_head_dim", "linear_conv_kernel"):
                _check_pos_int(f, getattr(self, f))
            if self.linear_num_value_heads % self.linear_num_key_heads:
                raise ConfigError(f"linear_num_key_heads={self.linear_num_key_heads} does not divide "
                                  f"linear_num_value_heads={self.linear_num_value_heads}")

    def _validate_rope_scaling(self) -> None:
        rs = self.rope_scaling
        if not isinstance(rs, dict):
            raise ConfigError(f"rope_scaling must be a dict or None, found {rs!r}")
        kind = rs.get("type", rs.get("rope_type"))
        _check_choice("rope_scaling.type", kind, ROPE_SCALINGS)
        if kind == "longrope":                      # per-dimension factor lists (estimator only)
            return
        if "factor" not in rs:
            raise ConfigError(f"rope_scaling.factor must be a positive number, found None")
        for key in ROPE_NUMBERS:
            v = rs.get(key)
            if key in rs and v is not None and not (_is_number(v) and 0 <= v <= FLOAT32_MAX):
                raise ConfigError(f"rope_scaling.{key} must be a finite number >= 0, found {v!r}")
        if not rs["factor"] > 0:
            raise ConfigError(f"rope_scaling.factor must be a positive number, found {rs['factor']!r}")
        if kind in ("llama3", "yarn"):
            _check_pos_int("rope_scaling.original_max_position_embeddings",
                           rs.get("original_max_position_embeddings"))
        if not isinstance(rs.get("truncate", True), bool):
            raise ConfigError(f"rope_scaling.truncate must be true or false, found {rs['truncate']!r}")

    # --- derived -------------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def route_width(self) -> int:
        """S, the columns of the router's per-token arrays (weights, experts): K for the
        token-choice rules, E for expert_choice (where a token may be taken by any expert)."""
        return self.n_experts if self.router == "expert_choice" else self.top_k

    def is_moe_layer(self, layer: int) -> bool:
        """True when this layer's FFN is a routed mixture of experts."""
        return self.n_experts > 0 and layer not in self.dense_layers

    @property
    def rope_dim(self) -> int:
        """How many channels of each head RoPE rotates: head_dim, or MLA's qk_rope_head_dim."""
        return self.qk_rope_head_dim if self.attention == "mla" else self.head_dim

    def window(self, layer: int) -> int:
        """The sliding window of this layer, or 0 for full causal attention."""
        if self.sliding_window and (self.sliding_layers is None or layer in self.sliding_layers):
            return self.sliding_window
        return 0

    def chunk(self, layer: int) -> int:
        """The attention chunk of this layer (Llama 4), or 0 if it attends to the whole context."""
        if self.attention_chunk_size and (self.chunked_layers is None or layer in self.chunked_layers):
            return self.attention_chunk_size
        return 0

    def is_linear_layer(self, layer: int) -> bool:
        """True when this layer mixes tokens with linear attention (a fixed-size state, no KV cache)."""
        return layer in self.linear_layers

    def estimator_only(self) -> list[str]:
        """The settings of this config that minimoe's Model does not run (the estimator counts them).
        Multi-token-prediction layers are listed too; the Model skips them, as transformers does."""
        found = [("linear_layers", bool(self.linear_layers)),
                 ("attention_chunk_size", bool(self.attention_chunk_size)),
                 ("attn_output_gate", self.attn_output_gate), ("norm", self.norm != "rmsnorm"),
                 ("head_bias", self.head_bias), ("router", self.router == "sparsemixer"),
                 ("rope_scaling", (self.rope_scaling or {}).get("type") == "longrope"),
                 ("n_mtp_layers", self.n_mtp_layers > 0)]
        return [f"{f}={getattr(self, f)!r}" for f, used in found if used]

    # --- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "Config":
        """Build a Config from a dict, naming `source` (a file, say) in any error."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object, found {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k != "model_type"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown config field(s) {unknown}{suggest_field(unknown[0])}")
        try:
            return cls(**d)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_json(self) -> str:
        return json.dumps({"model_type": "minimoe", **self.to_dict()}, indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> "Config":
        from minimoe.io.json_file import parse_json
        return cls.from_dict(parse_json(text, source, ConfigError), source)

    def save(self, path: str) -> None:
        from minimoe.io.atomic import atomic_write_text
        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str) -> "Config":
        from minimoe.io.json_file import read_json
        return cls.from_dict(read_json(path, ConfigError), source=os.fspath(path))

    def replace(self, **changes) -> "Config":
        """A copy with some fields changed, validated again."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}{suggest_field(unknown[0])}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **overrides) -> "Config":
        """A named configuration (case-insensitive); see `minimoe.presets.PRESETS`."""
        from minimoe.presets import get_preset
        return get_preset(name, **overrides)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_pos_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _check_pos_int(name, v):
    if not _is_pos_int(v):
        raise ConfigError(f"{name} must be a positive integer, found {v!r}")
    if v > MAX_SIZE:
        raise ConfigError(f"{name}={v} is beyond minimoe's bound of {MAX_SIZE:,} (2**24) for any size; "
                          f"a corrupt config?")


def _check_nonneg_int(name, v):
    if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
        raise ConfigError(f"{name} must be a non-negative integer, found {v!r}")
    if v > MAX_SIZE:
        raise ConfigError(f"{name}={v} is beyond minimoe's bound of {MAX_SIZE:,} (2**24) for any size; "
                          f"a corrupt config?")


def _check_layer_list(name, v):
    if not isinstance(v, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise ConfigError(f"{name} must be a list of layer indices (integers), found {v!r}")


def suggest_field(name: str) -> str:
    """'; did you mean n_experts?' (or the list of fields) for an unknown field name."""
    import difflib
    known = [f.name for f in dataclasses.fields(Config)]
    close = difflib.get_close_matches(str(name), known, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known fields are {sorted(known)}"


def _check_choice(name, v, choices):
    if v not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, found {v!r}")
