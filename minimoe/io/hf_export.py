"""minimoe Models -> Hugging Face model folders that transformers loads (the inverse of io/hf.py).

Shape legend: V vocab, C model width, H heads, G kv heads, D head dim, F expert width, E experts.

    model.save_hf("out")          # config.json, model.safetensors (float32), tokenizer.json

Which family (docs/export.md): the plainest family of transformers that computes exactly what
the config says, found from the config's options (a Config does not remember where it came from):

    latent attention: sigmoid router -> deepseek_v3, softmax router      -> deepseek_v2
    attention sinks (gpt-oss's)                                         -> gpt_oss
    a shared expert with a sigmoid gate                                 -> qwen2_moe
    qk_norm "full" (OLMoE's q/k RMSNorm over H*D)                       -> olmoe
    qk_norm "head" (RMSNorm over each head's D), or no renormalised top-k  -> qwen3_moe
    otherwise (softmax top-k renormalised, no biases, no q/k norm)      -> mixtral

So minimoe's own presets export as mixtral (or qwen3_moe when they use its options), and a model
loaded from one of those families goes back to its own. Latent attention exports as deepseek_v3
(sigmoid router with its correction bias) or deepseek_v2 (softmax router).

Weights are written as float32 under the Hub's names (one tensor per expert, Mixtral's
block_sparse_moe.experts.{e}.w1/w3/w2 and the mlp.experts.{e}.{gate,up,down}_proj of the others;
gpt-oss's own fused, interleaved gate_up_proj),
which transformers 4 and 5, vLLM and llama.cpp's convert_hf_to_gguf.py all read. A packed weight
is written as its dequantized float32 values.
"""
from __future__ import annotations

import json
import os

import numpy as np

from minimoe.errors import CheckpointError
from minimoe.io.atomic import atomic_path, atomic_write_text


class ExportError(CheckpointError):
    """A model whose config no supported Hugging Face family can express."""


def _need(cfg, family: str, **want) -> None:
    for key, value in want.items():
        if getattr(cfg, key) != value:
            raise ExportError(f"config {cfg.name!r}: {key}={getattr(cfg, key)!r} cannot be written as "
                              f"{family} (it needs {key}={value!r}); see docs/export.md")


# Each family: the config values it can express (the options it does not have must be off).
_OFF = dict(router_correction_bias=False, router_groups=1, router_topk_groups=1, attention="gqa", router="softmax_topk", router_bias=False, router_scale=1.0, expert_bias=False,
            attn_sinks=False, ffn_act="swiglu", n_shared_experts=0, norm="rmsnorm", rope_scaling=None,
            attn_output_gate=False, qk_norm="none", qkv_bias=False, o_bias=False, sliding_window=0,
            dense_layers=[], tie_embeddings=False, shared_expert_gate=False)
_FAMILY_NEEDS = {
    "mixtral": dict(router_renorm=True, sliding_window=None, sliding_layers=None),   # None: any value
    "qwen3_moe": dict(qk_norm="head", router_renorm=None, qkv_bias=None, o_bias=None, dense_layers=None,
                      tie_embeddings=None),
    "olmoe": dict(qk_norm="full", router_renorm=None, qkv_bias=None, o_bias=None, tie_embeddings=None),
    "qwen2_moe": dict(n_shared_experts=1, shared_expert_gate=True, router_renorm=None, qkv_bias=None,
                      dense_layers=None, tie_embeddings=None),
    "deepseek_v3": dict(attention="mla", router="sigmoid_topk", router_correction_bias=True, router_renorm=None,
                        router_scale=None, router_groups=None, router_topk_groups=None, n_shared_experts=None,
                        dense_layers=None, rope_interleave=True, tie_embeddings=None),
    "deepseek_v2": dict(attention="mla", router_renorm=False, router_scale=None, router_groups=None,
                        router_topk_groups=None, n_shared_experts=None, dense_layers=None, rope_interleave=True,
                        tie_embeddings=None),
    "gpt_oss": dict(router="topk_softmax", router_bias=True, expert_bias=True, attn_sinks=True,
                    ffn_act="swiglu_oai", swiglu_alpha=1.702, qkv_bias=None, o_bias=None, sliding_window=None,
                    sliding_layers=None, rope_scaling=None, tie_embeddings=None),
}


def family_for(cfg) -> str:
    """The transformers model_type this config exports to (the table above)."""
    if cfg.n_experts < 2:
        raise ExportError(f"config {cfg.name!r} is dense (n_experts={cfg.n_experts}); save_hf writes MoE families")
    if cfg.attention == "mla":
        family = "deepseek_v3" if cfg.router == "sigmoid_topk" else "deepseek_v2"
    elif cfg.attn_sinks:
        family = "gpt_oss"
    elif cfg.n_shared_experts:
        family = "qwen2_moe"
    elif cfg.qk_norm == "full":
        family = "olmoe"
    elif cfg.qk_norm == "head" or not cfg.router_renorm:
        family = "qwen3_moe"
    else:
        family = "mixtral"
    for key, want in {**_OFF, **_FAMILY_NEEDS[family]}.items():
        if want is not None and getattr(cfg, key) != want:
            raise ExportError(f"config {cfg.name!r}: {key}={getattr(cfg, key)!r} cannot be written as {family} "
                              f"(it needs {key}={want!r}); see docs/export.md")
    if family in ("qwen3_moe", "olmoe", "gpt_oss") and cfg.qkv_bias != cfg.o_bias:
        raise ExportError(f"config {cfg.name!r}: qkv_bias={cfg.qkv_bias} but o_bias={cfg.o_bias}; {family}'s "
                          f"attention_bias puts a bias on all four projections or none")
    if family == "olmoe" and cfg.head_dim * cfg.n_heads != cfg.d_model:
        raise ExportError(f"config {cfg.name!r}: olmoe needs head_dim * n_heads == d_model")
    if family.startswith("deepseek"):
        if cfg.dense_layers != list(range(len(cfg.dense_layers))):
            raise ExportError(f"config {cfg.name!r}: dense_layers={cfg.dense_layers}; DeepSeek's dense layers "
                              f"are the first first_k_dense_replace ones")
        if cfg.n_shared_experts and cfg.d_shared_expert != cfg.d_expert:
            raise ExportError(f"config {cfg.name!r}: d_shared_expert={cfg.d_shared_expert}; DeepSeek's shared "
                              f"experts have moe_intermediate_size={cfg.d_expert} each")
    if family == "mixtral" and cfg.sliding_layers is not None and cfg.sliding_window:
        raise ExportError(f"config {cfg.name!r}: sliding_layers={cfg.sliding_layers}; Mixtral's window "
                          f"applies to every layer")
    return family


def _layer_types(cfg) -> list[str]:
    """gpt-oss's layer_types: which layers use the sliding window."""
    sliding = set(range(cfg.n_layers)) if cfg.sliding_layers is None else set(cfg.sliding_layers)
    return ["sliding_attention" if cfg.sliding_window and i in sliding else "full_attention"
            for i in range(cfg.n_layers)]


def config_to_hf(cfg, family: str | None = None) -> dict:
    """The config.json dict for `family` (default: family_for(cfg))."""
    family = family or family_for(cfg)
    d = {"model_type": family, "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
         "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
         "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
         "max_position_embeddings": cfg.max_seq_len, "rope_theta": cfg.rope_theta,
         "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": bool(cfg.tie_embeddings),
         "hidden_act": "silu", "num_experts_per_tok": cfg.top_k, "torch_dtype": "float32",
         "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}   # not the family's defaults
    qwen_layers = dict(decoder_sparse_step=1, mlp_only_layers=list(cfg.dense_layers),
                       use_sliding_window=False, sliding_window=None)
    if family == "mixtral":
        d.update(architectures=["MixtralForCausalLM"], intermediate_size=cfg.d_expert,
                 num_local_experts=cfg.n_experts, sliding_window=cfg.sliding_window or None)
    elif family == "qwen3_moe":
        d.update(architectures=["Qwen3MoeForCausalLM"], intermediate_size=cfg.d_ff,
                 moe_intermediate_size=cfg.d_expert, num_experts=cfg.n_experts,
                 norm_topk_prob=bool(cfg.router_renorm), attention_bias=bool(cfg.qkv_bias), **qwen_layers)
    elif family == "qwen2_moe":
        d.update(architectures=["Qwen2MoeForCausalLM"], intermediate_size=cfg.d_ff,
                 moe_intermediate_size=cfg.d_expert, shared_expert_intermediate_size=cfg.d_shared_expert,
                 num_experts=cfg.n_experts, norm_topk_prob=bool(cfg.router_renorm),
                 qkv_bias=bool(cfg.qkv_bias), **qwen_layers)
    elif family == "olmoe":
        d.update(architectures=["OlmoeForCausalLM"], intermediate_size=cfg.d_expert,
                 num_experts=cfg.n_experts, norm_topk_prob=bool(cfg.router_renorm),
                 attention_bias=bool(cfg.qkv_bias), clip_qkv=None)
        d.pop("head_dim")
    elif family.startswith("deepseek"):
        d.pop("head_dim")
        d.update(architectures=["DeepseekV3ForCausalLM" if family == "deepseek_v3" else "DeepseekV2ForCausalLM"],
                 intermediate_size=cfg.d_ff, moe_intermediate_size=cfg.d_expert, n_routed_experts=cfg.n_experts,
                 n_shared_experts=cfg.n_shared_experts, first_k_dense_replace=len(cfg.dense_layers),
                 moe_layer_freq=1, routed_scaling_factor=cfg.router_scale, n_group=cfg.router_groups,
                 topk_group=cfg.router_topk_groups, norm_topk_prob=bool(cfg.router_renorm),
                 q_lora_rank=cfg.q_lora_rank or None, kv_lora_rank=cfg.kv_lora_rank,
                 qk_rope_head_dim=cfg.qk_rope_head_dim, qk_nope_head_dim=cfg.qk_nope_head_dim,
                 v_head_dim=cfg.v_head_dim, attention_bias=False)
        if family == "deepseek_v3":
            d.update(topk_method="noaux_tc", scoring_func="sigmoid", rope_interleave=True,
                     num_nextn_predict_layers=0)
        else:
            d.update(topk_method="greedy" if cfg.router_groups == 1 else "group_limited_greedy",
                     scoring_func="softmax")
    elif family == "gpt_oss":
        d.update(architectures=["GptOssForCausalLM"], intermediate_size=cfg.d_expert,
                 num_local_experts=cfg.n_experts, attention_bias=bool(cfg.qkv_bias),
                 sliding_window=cfg.sliding_window or None, layer_types=_layer_types(cfg),
                 swiglu_limit=cfg.swiglu_limit, rope_scaling=None)
        if cfg.rope_scaling is not None:
            scaling = dict(cfg.rope_scaling)
            d["rope_scaling"] = {"rope_type": scaling.pop("type"), **scaling}
    else:
        raise ExportError(f"unknown export family {family!r}")
    return d


def _float(t) -> np.ndarray:
    return np.ascontiguousarray(t if isinstance(t, np.ndarray) else t.dequantize(), dtype=np.float32)


def hf_tensors(model, family: str) -> dict[str, np.ndarray]:
    """minimoe params -> {HF name: float32 array} in the Hub naming of `family`."""
    cfg, p = model.config, model.params
    out = {"model.embed_tokens.weight": p["embed.weight"], "model.norm.weight": p["norm.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = p["head.weight"]
    for i in range(cfg.n_layers):
        ours, hf = f"layers.{i}.", f"model.layers.{i}."
        out[hf + "input_layernorm.weight"] = p[ours + "attn_norm.weight"]
        out[hf + "post_attention_layernorm.weight"] = p[ours + "ffn_norm.weight"]
        if cfg.attention == "mla":
            out.update(_mla_attention(p, ours + "attn.", hf + "self_attn."))
        for n in ("qkvo" if cfg.attention != "mla" else ""):
            out[hf + f"self_attn.{n}_proj.weight"] = p[ours + f"attn.{n}.weight"]
            if ours + f"attn.{n}.bias" in p:
                out[hf + f"self_attn.{n}_proj.bias"] = p[ours + f"attn.{n}.bias"]
        if cfg.attn_sinks:
            out[hf + "self_attn.sinks"] = p[ours + "attn.sinks"]                 # (H,)
        if cfg.qk_norm != "none":
            out[hf + "self_attn.q_norm.weight"] = p[ours + "attn.q_norm.weight"]
            out[hf + "self_attn.k_norm.weight"] = p[ours + "attn.k_norm.weight"]
        if not cfg.is_moe_layer(i):
            for n in ("gate", "up", "down"):
                out[hf + f"mlp.{n}_proj.weight"] = p[ours + f"ffn.{n}.weight"]
            continue
        if family == "gpt_oss":
            out.update(_gpt_oss_moe(p, ours, hf))
            continue
        if family == "mixtral":
            base, names = hf + "block_sparse_moe.", ("w1", "w3", "w2")
        else:
            base, names = hf + "mlp.", ("gate_proj", "up_proj", "down_proj")
        if family.startswith("deepseek"):
            if cfg.router_correction_bias:
                out[base + "gate.e_score_correction_bias"] = p[ours + "moe.router.e_score_correction_bias"]
            if cfg.n_shared_experts:
                for n in ("gate", "up", "down"):
                    out[hf + f"mlp.shared_experts.{n}_proj.weight"] = p[ours + f"moe.shared.{n}.weight"]
        if family == "qwen2_moe":
            for n in ("gate", "up", "down"):
                out[hf + f"mlp.shared_expert.{n}_proj.weight"] = p[ours + f"moe.shared.{n}.weight"]
            out[hf + "mlp.shared_expert_gate.weight"] = p[ours + "moe.shared_gate.weight"]   # (1, C)
        out[base + "gate.weight"] = p[ours + "moe.router.weight"]                 # (E, C)
        for mine, theirs in zip(("gate", "up", "down"), names):
            stack = _float(p[ours + f"moe.experts.{mine}"])                      # (E, F, C) or (E, C, F)
            for e in range(cfg.n_experts):
                out[base + f"experts.{e}.{theirs}.weight"] = stack[e]
    return {k: _float(v) for k, v in out.items()}


def _mla_attention(p, ours: str, hf: str) -> dict:
    """DeepSeek's latent attention tensors (the inverse of io/hf.py's _deepseek_params)."""
    names = {"q": "q_proj", "q_a": "q_a_proj", "q_a_norm": "q_a_layernorm", "q_b": "q_b_proj",
             "kv_a": "kv_a_proj_with_mqa", "kv_a_norm": "kv_a_layernorm", "kv_b": "kv_b_proj", "o": "o_proj"}
    return {hf + theirs + ".weight": p[ours + mine + ".weight"] for mine, theirs in names.items()
            if ours + mine + ".weight" in p}


def _gpt_oss_moe(p, ours: str, hf: str) -> dict:
    """gpt-oss's MoE tensors (the inverse of io/hf.py's _gpt_oss_params): input-major experts with
    gate and up interleaved along the output axis, column 2j gate j, column 2j + 1 up j."""
    gate, up = _float(p[ours + "moe.experts.gate"]), _float(p[ours + "moe.experts.up"])    # (E, F, C) each
    E, F, C = gate.shape
    gate_up = np.empty((E, C, 2 * F), np.float32)                                        # (E, C, 2F)
    gate_up[:, :, 0::2] = gate.transpose(0, 2, 1)
    gate_up[:, :, 1::2] = up.transpose(0, 2, 1)
    gu_bias = np.empty((E, 2 * F), np.float32)                                           # (E, 2F)
    gu_bias[:, 0::2] = p[ours + "moe.experts.gate_bias"]
    gu_bias[:, 1::2] = p[ours + "moe.experts.up_bias"]
    m = hf + "mlp."
    return {m + "router.weight": p[ours + "moe.router.weight"], m + "router.bias": p[ours + "moe.router.bias"],
            m + "experts.gate_up_proj": gate_up, m + "experts.gate_up_proj_bias": gu_bias,
            m + "experts.down_proj": _float(p[ours + "moe.experts.down"]).transpose(0, 2, 1),   # (E, C, F) -> (E, F, C)
            m + "experts.down_proj_bias": p[ours + "moe.experts.down_bias"]}


# --------------------------------------------------------------------------------------------------
# The tokenizer as a Hugging Face tokenizer.json
# --------------------------------------------------------------------------------------------------

def tokenizer_json(tok) -> dict | None:
    """A tokenizer.json dict for minimoe's tokenizers: an HF tokenizer as it was read; the byte
    tokenizer as a byte-level BPE with no merges (ids 0..255 = the byte, then the special tokens);
    the character tokenizer as a BPE over its characters with no merges and a Fuse decoder."""
    if tok is None:
        return None
    if getattr(tok, "kind", None) == "byte":
        from minimoe.hf_tokenizer.bpe import bytes_to_chars
        chars = bytes_to_chars()                                        # byte -> printable char
        vocab = {chars[b]: b for b in range(256)}
        added = [{"id": 256 + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                  "normalized": False, "special": True} for i, s in enumerate(tok.special_tokens)]
        return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
                "normalizer": None,
                "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                                  "use_regex": False},
                "post_processor": None,
                "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                            "use_regex": False},
                "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                          "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                          "ignore_merges": False, "vocab": vocab, "merges": []}}
    if getattr(tok, "kind", None) == "char":
        return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
                "normalizer": None, "pre_tokenizer": None, "post_processor": None,
                "decoder": {"type": "Fuse"},
                "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                          "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                          "ignore_merges": False, "vocab": {c: i for i, c in enumerate(tok.chars)},
                          "merges": []}}
    return json.loads(tok.to_json())                                    # an HF tokenizer, as read


def save_hf(model, folder: str, family: str | None = None) -> str:
    """Write `model` as a Hugging Face folder: config.json, model.safetensors (float32) and
    tokenizer.json (when the model has a tokenizer). Returns the family written."""
    from safetensors.numpy import save_file
    cfg = model.config
    family = family or family_for(cfg)
    config = config_to_hf(cfg, family)
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    with atomic_path(os.path.join(folder, "model.safetensors")) as tmp:
        save_file(hf_tensors(model, family), tmp, metadata={"format": "pt"})
    spec = tokenizer_json(model.tokenizer)
    if spec is not None:
        atomic_write_text(os.path.join(folder, "tokenizer.json"), json.dumps(spec, ensure_ascii=False) + "\n")
        atomic_write_text(os.path.join(folder, "tokenizer_config.json"),
                          json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}) + "\n")
    atomic_write_text(os.path.join(folder, "config.json"), json.dumps(config, indent=2) + "\n")   # last
    return family
