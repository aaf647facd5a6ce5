"""Hugging Face model folders -> minimoe Models, one name map per family.

A Hugging Face folder has config.json and either model.safetensors or shards listed in
model.safetensors.index.json ({"weight_map": {tensor: file}}). Weights may be bf16, fp16 or fp32;
minimoe computes in float32. The shards are memory-mapped and each tensor is held as
minimoe/io/mapped.py says (as stored by default: bf16 stays bf16). gpt-oss's MXFP4 experts (uint8
`*_blocks` and `*_scales`) are kept packed, as minimoe mxfp4 QTensors: no value is unpacked to
float, none is re-quantized (their nibbles are reordered into GGUF's layout: a copy).

What is a view of the file and what is copied: a tensor that keeps its name and layout is a
view. Hub checkpoints that store one tensor per expert are stacked into (E, F, C), a copy in the
stored precision (transformers v5's fused layout is a view); gpt-oss's interleaved gate/up rows
are a strided view, copied once when held.

Every family shares the decoder skeleton (names under model.layers.{i}.):

    HF name                                      minimoe name (layers.{i}.)
    model.embed_tokens.weight                    embed.weight
    input_layernorm.weight                       attn_norm.weight
    self_attn.{q,k,v,o}_proj.weight (+ .bias)    attn.{q,k,v,o}.weight (+ .bias)
    self_attn.{q,k}_norm.weight                  attn.{q,k}_norm.weight          (OLMoE, Qwen3-MoE)
    self_attn.sinks                              attn.sinks                      (gpt-oss)
    post_attention_layernorm.weight              ffn_norm.weight
    mlp.{gate,up,down}_proj.weight               ffn.{gate,up,down}.weight       (dense layers)
    model.norm.weight, lm_head.weight            norm.weight, head.weight (absent when tied)

and differs in its attention and its MoE block, spelled out in each family's function below and
in docs/checkpoints.md. Routed experts come in two namings, both read:

    Hub (one tensor per expert)                  transformers v5 (fused, what save_pretrained
                                                 writes with save_original_format=False)
    mlp.experts.{e}.gate_proj.weight (F, C)      mlp.experts.gate_up_proj (E, 2F, C): rows [:F] gate,
    mlp.experts.{e}.up_proj.weight   (F, C)                                           [F:] up
    mlp.experts.{e}.down_proj.weight (C, F)      mlp.experts.down_proj (E, C, F)

(Mixtral's Hub names are block_sparse_moe.experts.{e}.w1/w3/w2: w1 is the gate, w3 up, w2 down.)
"""
from __future__ import annotations

import os

import numpy as np

from minimoe.config import ConfigError
from minimoe.errors import CheckpointError
from minimoe.io.hf_config import config_from_hf
from minimoe.io.json_file import read_json
from minimoe.io.pages import release
from minimoe.io.safetensors_file import map_tensors, read_tensors


def read_weights(folder: str, mapped: bool = False) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of a HF folder, and the file each came from. Float tensors come back as
    float32; integer ones (gpt-oss's MXFP4 blocks and scales) as they are stored. With mapped=True
    they are memory-mapped views of the files, as stored (BF16 as its uint16 bits)."""
    single = os.path.join(folder, "model.safetensors")
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        weight_map = read_json(index, CheckpointError, expect=dict).get("weight_map")
        if not (isinstance(weight_map, dict) and all(isinstance(v, str) for v in weight_map.values())):
            raise CheckpointError(f"{index}: weight_map must be a JSON object of tensor name -> shard "
                                  f"file name, found {str(weight_map)[:80]}")
        files = sorted(set(weight_map.values()))
    elif os.path.exists(single):
        weight_map, files = None, ["model.safetensors"]
    else:
        raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    tensors, origin = {}, {}
    for fn in files:
        path = shard_path(folder, fn, index)
        if not os.path.isfile(path):
            raise CheckpointError(f"{index}: lists shard {fn}, which is missing from {folder}")
        arrays = map_tensors(path)[0] if mapped else read_tensors(path, to_float32=True)[0]
        for name, arr in arrays.items():
            if name in tensors:
                raise CheckpointError(f"{path}: tensor {name!r} is also in {origin[name]}; which one "
                                      f"is meant is ambiguous")
            if np.issubdtype(arr.dtype, np.floating) and not mapped:
                arr = arr.astype(np.float32, copy=False)
            tensors[name] = arr
            origin[name] = path
    if weight_map is not None:
        for name, fn in weight_map.items():
            if origin.get(name) != shard_path(folder, fn, index):
                raise CheckpointError(f"{os.path.join(folder, fn)}: tensor {name!r} listed in "
                                      f"{index} is not in the file")
    return tensors, origin


def shard_path(folder: str, name: str, index: str) -> str:
    """The path of shard `name` of a model folder. A shard index names files inside the folder:
    an absolute path, or one that climbs out with '..', is refused before anything is opened.
    (The folder itself, or a shard, may be a symlink, as in the Hugging Face cache.)"""
    parts = name.replace("\\", "/").split("/")
    if not name or os.path.isabs(name) or "\0" in name or ".." in parts or ":" in parts[0]:
        raise CheckpointError(f"{index}: shard {name!r} is not a file name inside the model folder")
    return os.path.join(folder, *parts)


class _Take:
    """Pops tensors by HF name, so that whatever is left over at the end is 'unexpected'."""

    def __init__(self, tensors, origin, folder):
        self.tensors, self.origin, self.folder = dict(tensors), origin, folder

    def __call__(self, name: str, shape: tuple | None = None) -> np.ndarray:
        if name not in self.tensors:
            raise CheckpointError(f"{self.folder}: missing tensor {name!r}")
        arr = self.tensors.pop(name)
        if shape is not None and arr.shape != tuple(shape):
            raise CheckpointError(f"{self.origin.get(name, self.folder)}: tensor {name!r} has shape "
                                  f"{arr.shape}, expected {tuple(shape)} from config.json")
        return arr

    def has(self, name: str) -> bool:
        return name in self.tensors

    def drop(self, prefix: str) -> None:
        """Forget every tensor under `prefix` (layers transformers does not build either)."""
        for name in [n for n in self.tensors if n.startswith(prefix)]:
            del self.tensors[name]

    def finish(self):
        if self.tensors:
            name = sorted(self.tensors)[0]
            raise CheckpointError(f"{self.origin.get(name, self.folder)}: unexpected tensor {name!r} "
                                  f"(shape {self.tensors[name].shape}) that config.json does not describe")


# --------------------------------------------------------------------------------------------------
# Pieces every family shares
# --------------------------------------------------------------------------------------------------

def _decoder(take: _Take, cfg, attention, moe) -> dict[str, np.ndarray]:
    """The skeleton: embedding, per layer the two norms, `attention(hf, p)` and either
    `moe(hf, p)` or a dense SwiGLU, then the final norm and the head."""
    params = {"embed.weight": take("model.embed_tokens.weight")}
    for i in range(cfg.n_layers):
        hf, p = f"model.layers.{i}.", f"layers.{i}."
        params[p + "attn_norm.weight"] = take(hf + "input_layernorm.weight")
        params.update(attention(hf + "self_attn.", p + "attn."))
        params[p + "ffn_norm.weight"] = take(hf + "post_attention_layernorm.weight")
        if cfg.is_moe_layer(i):
            params.update(moe(hf, p + "moe."))
        else:
            params.update(_swiglu(take, hf + "mlp.", p + "ffn."))
    params["norm.weight"] = take("model.norm.weight")
    if not cfg.tie_embeddings:
        params["head.weight"] = take("lm_head.weight")
    elif take.has("lm_head.weight"):                                # some tied exports still write it
        take("lm_head.weight")
    return params


def _swiglu(take: _Take, hf: str, p: str) -> dict[str, np.ndarray]:
    """{gate,up,down}_proj.weight -> {gate,up,down}.weight: a dense FFN or the shared experts."""
    return {p + f"{n}.weight": take(hf + f"{n}_proj.weight") for n in ("gate", "up", "down")}


def _gqa_attention(take: _Take, cfg, sinks: bool = False):
    """q/k/v/o projections (+ biases), q/k norms and sinks, as the config says."""
    def read(hf: str, p: str) -> dict[str, np.ndarray]:
        out = {p + f"{n}.weight": take(hf + f"{n}_proj.weight") for n in "qkvo"}
        if cfg.qkv_bias:
            out.update({p + f"{n}.bias": take(hf + f"{n}_proj.bias") for n in "qkv"})
        if cfg.o_bias:
            out[p + "o.bias"] = take(hf + "o_proj.bias")
        if cfg.qk_norm != "none":
            out[p + "q_norm.weight"] = take(hf + "q_norm.weight")
            out[p + "k_norm.weight"] = take(hf + "k_norm.weight")
        if sinks:
            out[p + "sinks"] = take(hf + "sinks")
        return out
    return read


def _experts(take: _Take, cfg, hf: str, p: str, names=("gate_proj", "up_proj", "down_proj")):
    """Routed experts under `hf` ("...mlp." or Mixtral's "...block_sparse_moe."), in either naming,
    stacked as experts.gate (E, F, C), experts.up (E, F, C), experts.down (E, C, F)."""
    E, F, C = cfg.n_experts, cfg.d_expert, cfg.d_model
    if take.has(hf + "experts.gate_up_proj"):                       # transformers v5, fused
        gate_up = take(hf + "experts.gate_up_proj", (E, 2 * F, C))  # rows [:F] gate, [F:] up
        return {p + "experts.gate": gate_up[:, :F], p + "experts.up": gate_up[:, F:],
                p + "experts.down": take(hf + "experts.down_proj", (E, C, F))}
    out = {}
    for ours, theirs, shape in zip(("gate", "up", "down"), names, ((F, C), (F, C), (C, F))):
        per_expert = [take(hf + f"experts.{e}.{theirs}.weight", shape) for e in range(E)]
        out[p + f"experts.{ours}"] = np.stack(per_expert)           # E x (F, C) -> (E, F, C), a copy
        for arr in per_expert:                                      # the mapped pages, read once
            release(arr)
    return out


# --------------------------------------------------------------------------------------------------
# The families
# --------------------------------------------------------------------------------------------------

def _mixtral_params(take: _Take, cfg) -> dict[str, np.ndarray]:
    """Mixtral: the router is block_sparse_moe.gate (Hub) or mlp.gate (v5); experts w1/w3/w2."""
    def moe(hf, p):
        base = hf + ("mlp." if take.has(hf + "mlp.gate.weight") else "block_sparse_moe.")
        return {p + "router.weight": take(base + "gate.weight"),
                **_experts(take, cfg, base, p, names=("w1", "w3", "w2"))}
    return _decoder(take, cfg, _gqa_attention(take, cfg), moe)


def _olmoe_qwen_params(take: _Take, cfg) -> dict[str, np.ndarray]:
    """OLMoE, Qwen3-MoE and Qwen2-MoE: mlp.gate.weight is the router; Qwen2-MoE adds
    mlp.shared_expert.{gate,up,down}_proj and its sigmoid gate mlp.shared_expert_gate.weight."""
    def moe(hf, p):
        out = {p + "router.weight": take(hf + "mlp.gate.weight"), **_experts(take, cfg, hf + "mlp.", p)}
        if cfg.n_shared_experts:
            out.update(_swiglu(take, hf + "mlp.shared_expert.", p + "shared."))
            out[p + "shared_gate.weight"] = take(hf + "mlp.shared_expert_gate.weight")
        return out
    return _decoder(take, cfg, _gqa_attention(take, cfg), moe)


def _gpt_oss_params(take: _Take, cfg) -> dict[str, np.ndarray]:
    """gpt-oss: mlp.router.{weight,bias}; the experts stored input-major with gate and up
    INTERLEAVED along the output axis (column 2j is gate j, column 2j+1 is up j):

        mlp.experts.gate_up_proj       (E, C, 2F)   -> experts.gate = [:, :, 0::2].T, up = [:, :, 1::2].T
        mlp.experts.gate_up_proj_bias  (E, 2F)      -> experts.gate_bias = [:, 0::2], up_bias = [:, 1::2]
        mlp.experts.down_proj          (E, F, C)    -> experts.down = .T (E, C, F)
        mlp.experts.down_proj_bias     (E, C)       -> experts.down_bias

    Released checkpoints store the two matrices as MXFP4 instead, output-major:
        gate_up_proj_blocks (E, 2F, C/32, 16) uint8, gate_up_proj_scales (E, 2F, C/32) uint8
        down_proj_blocks    (E, C, F/32, 16),        down_proj_scales    (E, C, F/32)
    (rows 2j / 2j+1 are gate j / up j). Those become packed mxfp4 QTensors; see
    minimoe/quant/mxfp4.py for the byte layout.
    """
    E, F, C = cfg.n_experts, cfg.d_expert, cfg.d_model

    def moe(hf, p):
        m = hf + "mlp."
        out = {p + "router.weight": take(m + "router.weight"), p + "router.bias": take(m + "router.bias")}
        gu_bias = take(m + "experts.gate_up_proj_bias", (E, 2 * F))
        out[p + "experts.gate_bias"], out[p + "experts.up_bias"] = gu_bias[:, 0::2], gu_bias[:, 1::2]
        out[p + "experts.down_bias"] = take(m + "experts.down_proj_bias", (E, C))
        if take.has(m + "experts.gate_up_proj_blocks"):
            out.update(_gpt_oss_mxfp4(take, cfg, m + "experts.", p))
        else:
            gate_up = take(m + "experts.gate_up_proj", (E, C, 2 * F))
            out[p + "experts.gate"] = gate_up[:, :, 0::2].transpose(0, 2, 1)  # (E, C, F) -> (E, F, C)
            out[p + "experts.up"] = gate_up[:, :, 1::2].transpose(0, 2, 1)
            out[p + "experts.down"] = take(m + "experts.down_proj", (E, F, C)).transpose(0, 2, 1)
        return out
    return _decoder(take, cfg, _gqa_attention(take, cfg, sinks=True), moe)


def _gpt_oss_mxfp4(take: _Take, cfg, hf: str, p: str) -> dict:
    from minimoe.quant import QuantError
    from minimoe.quant.mxfp4 import from_hf_mxfp4
    E, F, C = cfg.n_experts, cfg.d_expert, cfg.d_model
    for width, what in ((C, "hidden_size"), (F, "intermediate_size")):
        if width % 32:
            raise CheckpointError(f"{take.folder}: gpt-oss MXFP4 experts need {what} divisible by 32, "
                                  f"found {width}")
    blocks = take(hf + "gate_up_proj_blocks", (E, 2 * F, C // 32, 16))
    scales = take(hf + "gate_up_proj_scales", (E, 2 * F, C // 32))
    down_b = take(hf + "down_proj_blocks", (E, C, F // 32, 16))
    down_s = take(hf + "down_proj_scales", (E, C, F // 32))
    try:
        out = {p + "experts.gate": from_hf_mxfp4(blocks[:, 0::2], scales[:, 0::2], p + "experts.gate"),
               p + "experts.up": from_hf_mxfp4(blocks[:, 1::2], scales[:, 1::2], p + "experts.up"),
               p + "experts.down": from_hf_mxfp4(down_b, down_s, p + "experts.down")}
    except QuantError as e:
        raise CheckpointError(f"{take.folder}: {e}") from None
    for arr in (blocks, scales, down_b, down_s):                    # repacked: the mapped pages, read once
        release(arr)
    return out


def _deepseek_params(take: _Take, cfg) -> dict[str, np.ndarray]:
    """DeepSeek-V2/V3: latent attention, routed + shared experts, dense first layers.

        self_attn.q_proj.weight                  attn.q.weight          (q_lora_rank null, V2-Lite)
        self_attn.q_a_proj.weight                attn.q_a.weight        (Rq, C)
        self_attn.q_a_layernorm.weight           attn.q_a_norm.weight   (Rq,)
        self_attn.q_b_proj.weight                attn.q_b.weight        (H*(Dn+Dr), Rq)
        self_attn.kv_a_proj_with_mqa.weight      attn.kv_a.weight       (Rkv+Dr, C)
        self_attn.kv_a_layernorm.weight          attn.kv_a_norm.weight  (Rkv,)
        self_attn.kv_b_proj.weight               attn.kv_b.weight       (H*(Dn+Dv), Rkv)
        self_attn.o_proj.weight                  attn.o.weight          (C, H*Dv)
        mlp.gate.weight                          moe.router.weight
        mlp.gate.e_score_correction_bias         moe.router.e_score_correction_bias  (V3)
        mlp.shared_experts.{gate,up,down}_proj   moe.shared.{gate,up,down}.weight

    The multi-token-prediction layers the V3 checkpoints append (model.layers.{n_layers}...) are
    skipped, as transformers skips them.
    """
    def attention(hf, p):
        out = {}
        if cfg.q_lora_rank:
            out[p + "q_a.weight"] = take(hf + "q_a_proj.weight")
            out[p + "q_a_norm.weight"] = take(hf + "q_a_layernorm.weight")
            out[p + "q_b.weight"] = take(hf + "q_b_proj.weight")
        else:
            out[p + "q.weight"] = take(hf + "q_proj.weight")
        out[p + "kv_a.weight"] = take(hf + "kv_a_proj_with_mqa.weight")
        out[p + "kv_a_norm.weight"] = take(hf + "kv_a_layernorm.weight")
        out[p + "kv_b.weight"] = take(hf + "kv_b_proj.weight")
        out[p + "o.weight"] = take(hf + "o_proj.weight")
        return out

    def moe(hf, p):
        out = {p + "router.weight": take(hf + "mlp.gate.weight"), **_experts(take, cfg, hf + "mlp.", p)}
        if cfg.router_correction_bias:
            out[p + "router.e_score_correction_bias"] = take(hf + "mlp.gate.e_score_correction_bias")
        out.update(_swiglu(take, hf + "mlp.shared_experts.", p + "shared."))
        return out

    layer = cfg.n_layers
    while any(n.startswith(f"model.layers.{layer}.") for n in take.tensors):  # MTP layers
        take.drop(f"model.layers.{layer}.")
        layer += 1
    return _decoder(take, cfg, attention, moe)


LOADERS = {"mixtral": _mixtral_params, "olmoe": _olmoe_qwen_params, "qwen2_moe": _olmoe_qwen_params,
           "qwen3_moe": _olmoe_qwen_params, "gpt_oss": _gpt_oss_params,
           "deepseek_v3": _deepseek_params, "deepseek_v2": _deepseek_params}


# Options that change no parameter count (the estimator reads them without complaint) but that
# minimoe's model does not run: (field, the value it runs, the model_types it concerns (None: all), why).
NOT_RUN = [
    ("hidden_act", "silu", None, "minimoe's FFNs are SwiGLU"),
    ("clip_qkv", None, ("olmoe",), "minimoe does not clamp q, k and v; released OLMoE has null"),
    ("scoring_func", "sigmoid", ("deepseek_v3",), "transformers' DeepseekV3 always scores with a sigmoid"),
    ("topk_method", "noaux_tc", ("deepseek_v3",), "transformers' DeepseekV3 always routes group-limited "
                                                  "with the correction bias"),
    ("scoring_func", "softmax", ("deepseek_v2",), "transformers' DeepseekV2 always scores with a softmax"),
    ("norm_topk_prob", False, ("deepseek_v2",), "transformers' DeepseekV2 never renormalises the top-k"),
]


def check_runnable(raw: dict, source: str) -> None:
    """Refuse, naming the family and the field, what the model would not compute as transformers does."""
    family = raw.get("model_type")
    quant = raw.get("quantization_config")
    if quant is not None:
        method = quant.get("quant_method") if isinstance(quant, dict) else quant
        if not (family == "gpt_oss" and method == "mxfp4"):
            raise CheckpointError(f"{source}: {family}: quantization_config.quant_method={method!r} is not "
                                  f"supported; minimoe reads fp32, bf16 and fp16 weights, and gpt-oss's mxfp4 "
                                  f"experts (dequantize the checkpoint to bf16 first)")
    for field, runs, families, why in NOT_RUN:
        value = raw.get(field)
        if (families is None or family in families) and value is not None and value != runs:
            raise CheckpointError(f"{source}: {family}: {field}={value!r} is not supported ({why}); "
                                  f"expected {runs!r}")


def load(folder: str, raw_config: dict, dtype=None, check_finite: bool = True, recipe=None):
    """A Hugging Face folder whose config.json is `raw_config` -> Model (see minimoe.load)."""
    from minimoe.io.checkpoint import check_params
    from minimoe.io.mapped import hold
    from minimoe.model import Model
    config_path = os.path.join(folder, "config.json")
    check_runnable(raw_config, config_path)
    try:
        cfg = config_from_hf(raw_config, source=config_path)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    tensors, origin = read_weights(folder, mapped=True)
    take = _Take(tensors, origin, folder)
    params = LOADERS[raw_config["model_type"]](take, cfg)
    take.finish()
    check_params(params, cfg, folder)
    params = hold(params, cfg, folder, recipe, dtype, check_finite)
    tokenizer = None
    if os.path.exists(os.path.join(folder, "tokenizer.json")):     # text in and out (hf_tokenizer/)
        from minimoe.tokenizer import load_tokenizer
        tokenizer = load_tokenizer(folder)
    return Model(cfg, params=params, tokenizer=tokenizer)
