"""Hugging Face model folders -> minimoe Models.

A Hugging Face folder has config.json and either model.safetensors or shards listed in
model.safetensors.index.json ({"weight_map": {tensor: file}}). Weights may be bf16, fp16 or
fp32; minimoe computes in float32.

Mixtral's tensors appear under two namings, and both are read:

    Hub (legacy, every released Mixtral)                   transformers v5 ("fused")
    model.embed_tokens.weight                              same
    model.layers.{i}.input_layernorm.weight                same
    model.layers.{i}.self_attn.{q,k,v,o}_proj.weight       same
    model.layers.{i}.post_attention_layernorm.weight       same
    model.layers.{i}.block_sparse_moe.gate.weight          model.layers.{i}.mlp.gate.weight
    ...block_sparse_moe.experts.{e}.w1.weight (F, C)       model.layers.{i}.mlp.experts.gate_up_proj
    ...block_sparse_moe.experts.{e}.w3.weight (F, C)           (E, 2F, C): rows [:F] w1, [F:] w3
    ...block_sparse_moe.experts.{e}.w2.weight (C, F)       model.layers.{i}.mlp.experts.down_proj (E, C, F)
    model.norm.weight                                      same
    lm_head.weight (absent when tied)                      same

Mixtral's w1 is minimoe's experts.gate, w3 is experts.up and w2 is experts.down.
"""
from __future__ import annotations

import os

import numpy as np

from minimoe.config import ConfigError
from minimoe.errors import CheckpointError
from minimoe.io.hf_config import config_from_hf
from minimoe.io.json_file import read_json
from minimoe.io.safetensors_file import read_tensors


def read_weights(folder: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of a HF folder as float32, and the file each came from."""
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
        arrays, _ = read_tensors(path, to_float32=True)
        for name, arr in arrays.items():
            if name in tensors:
                raise CheckpointError(f"{path}: tensor {name!r} is also in {origin[name]}; which one "
                                      f"is meant is ambiguous")
            tensors[name] = arr.astype(np.float32, copy=False)
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

    def __call__(self, name: str) -> np.ndarray:
        if name not in self.tensors:
            raise CheckpointError(f"{self.folder}: missing tensor {name!r}")
        return self.tensors.pop(name)

    def has(self, name: str) -> bool:
        return name in self.tensors

    def finish(self):
        if self.tensors:
            name = sorted(self.tensors)[0]
            raise CheckpointError(f"{self.origin.get(name, self.folder)}: unexpected tensor {name!r} "
                                  f"(shape {self.tensors[name].shape}) that config.json does not describe")


def _mixtral_params(take: _Take, cfg) -> dict[str, np.ndarray]:
    F, E = cfg.d_expert, cfg.n_experts
    params = {"embed.weight": take("model.embed_tokens.weight")}
    for i in range(cfg.n_layers):
        hf, p = f"model.layers.{i}.", f"layers.{i}."
        params[p + "attn_norm.weight"] = take(hf + "input_layernorm.weight")
        for n in "qkvo":
            params[p + f"attn.{n}.weight"] = take(hf + f"self_attn.{n}_proj.weight")
        params[p + "ffn_norm.weight"] = take(hf + "post_attention_layernorm.weight")
        if take.has(hf + "mlp.gate.weight"):                        # transformers v5 naming
            params[p + "moe.router.weight"] = take(hf + "mlp.gate.weight")
            gate_up = take(hf + "mlp.experts.gate_up_proj")         # (E, 2F, C)
            if gate_up.shape[:2] != (E, 2 * F):
                raise CheckpointError(f"{take.folder}: tensor {hf}mlp.experts.gate_up_proj has shape "
                                      f"{gate_up.shape}, expected ({E}, {2 * F}, {cfg.d_model})")
            params[p + "moe.experts.gate"] = gate_up[:, :F]         # (E, F, C)
            params[p + "moe.experts.up"] = gate_up[:, F:]           # (E, F, C)
            params[p + "moe.experts.down"] = take(hf + "mlp.experts.down_proj")  # (E, C, F)
        else:                                                       # Hub naming, one tensor per expert
            moe = hf + "block_sparse_moe."
            params[p + "moe.router.weight"] = take(moe + "gate.weight")
            for ours, theirs in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
                per_expert = [take(moe + f"experts.{e}.{theirs}.weight") for e in range(E)]
                shapes = {a.shape for a in per_expert}
                if len(shapes) != 1:
                    raise CheckpointError(f"{take.folder}: experts of {moe}experts.*.{theirs}.weight "
                                          f"have different shapes {sorted(shapes)}")
                params[p + f"moe.experts.{ours}"] = np.stack(per_expert)  # E x (F, C) -> (E, F, C)
    params["norm.weight"] = take("model.norm.weight")
    if not cfg.tie_embeddings:
        params["head.weight"] = take("lm_head.weight")
    elif take.has("lm_head.weight"):                                # some tied exports still write it
        take("lm_head.weight")
    return params


LOADERS = {"mixtral": _mixtral_params}


def load(folder: str, raw_config: dict, dtype=np.float32, check_finite: bool = True):
    """A Hugging Face folder whose config.json is `raw_config` -> Model."""
    from minimoe.io.checkpoint import check_finite_params, check_params
    from minimoe.model import Model
    config_path = os.path.join(folder, "config.json")
    try:
        cfg = config_from_hf(raw_config, source=config_path)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    tensors, origin = read_weights(folder)
    take = _Take(tensors, origin, folder)
    params = LOADERS[raw_config["model_type"]](take, cfg)
    take.finish()
    check_params(params, cfg, folder)
    if check_finite:
        check_finite_params(params, folder)
    params = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in params.items()}
    return Model(cfg, params=params)
