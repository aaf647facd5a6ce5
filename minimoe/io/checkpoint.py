"""minimoe checkpoints: a folder with config.json, model.safetensors and (optionally) tokenizer.json.

    config.json         the Config, plus "model_type": "minimoe"
    model.safetensors   one tensor per parameter, named as minimoe/params.py names them.
                        A packed (quantized) weight is stored as its uint8 GGUF blocks under the
                        same name; the header's __metadata__["minimoe.quant"] maps each packed
                        name to its format and logical shape. Nothing is unpacked on disk.
    tokenizer.json      the tokenizer the model was trained with

`load(folder)` reads a minimoe checkpoint or a Hugging Face model folder (see minimoe/io/hf.py),
and checks every tensor's name, shape and dtype against the Config before building the Model.
Every write is atomic: files are written under temporary names and renamed into place.
"""
from __future__ import annotations

import json
import os

import numpy as np

from minimoe.config import Config, ConfigError
from minimoe.errors import CheckpointError
from minimoe.io.atomic import atomic_path, atomic_write_text
from minimoe.io.safetensors_file import read_header, read_tensors
from minimoe.params import param_shapes

QUANT_KEY = "minimoe.quant"


def _is_packed(arr) -> bool:
    return hasattr(arr, "fmt") and hasattr(arr, "blocks")


def save(model, folder: str) -> None:
    """Write `model` into `folder` (created if needed). Packed weights stay packed."""
    from safetensors.numpy import save_file
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    tensors, packed = {}, {}
    for name, arr in model.params.items():
        if _is_packed(arr):
            tensors[name] = np.ascontiguousarray(arr.blocks)
            packed[name] = {"fmt": arr.fmt, "shape": list(arr.shape)}
        else:
            tensors[name] = np.ascontiguousarray(arr)
    metadata = {"format": "minimoe"}
    if packed:
        metadata[QUANT_KEY] = json.dumps(packed)
    with atomic_path(os.path.join(folder, "model.safetensors")) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    if model.tokenizer is not None:
        atomic_write_text(os.path.join(folder, "tokenizer.json"), model.tokenizer.to_json() + "\n")
    # config last: a folder with a config.json is a complete checkpoint
    model.config.save(os.path.join(folder, "config.json"))


def load(folder: str, dtype=np.float32):
    """Load a minimoe checkpoint, a Hugging Face model folder or a .gguf file as a Model."""
    folder = os.fspath(folder)
    if folder.endswith(".gguf") and not os.path.isdir(folder):
        from minimoe.io.gguf_file import load_gguf
        return load_gguf(folder)
    config_path = os.path.join(folder, "config.json")
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: no such model folder")
    if not os.path.exists(config_path):
        raise CheckpointError(f"{folder}: no config.json (expected a minimoe checkpoint or a "
                              f"Hugging Face model folder)")
    try:
        with open(config_path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object")
    model_type = raw.get("model_type")
    if model_type == "minimoe":
        return _load_minimoe(folder, raw, config_path, dtype)
    from minimoe.io import hf
    if model_type in hf.LOADERS:
        return hf.load(folder, raw, dtype)
    raise CheckpointError(f"{config_path}: unknown model_type {model_type!r}; minimoe loads "
                          f"'minimoe' and {sorted(hf.LOADERS)}")


def _load_minimoe(folder, raw, config_path, dtype):
    from minimoe.model import Model
    try:
        cfg = Config.from_dict(raw, source=config_path)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    path = os.path.join(folder, "model.safetensors")
    if not os.path.exists(path):
        raise CheckpointError(f"{folder}: missing model.safetensors")
    tensors, metadata = read_tensors(path)
    packed = json.loads(metadata.get(QUANT_KEY, "{}"))
    params = {}
    for name, arr in tensors.items():
        if name in packed:
            from minimoe.quant import QTensor
            info = packed[name]
            try:
                params[name] = QTensor(fmt=info["fmt"], shape=tuple(info["shape"]), blocks=arr)
            except ValueError as e:
                raise CheckpointError(f"{path}: packed tensor {name!r}: {e}") from None
        else:
            params[name] = arr
    check_params(params, cfg, path, dtype)
    params = {k: v if _is_packed(v) else v.astype(dtype, copy=False) for k, v in params.items()}
    tokenizer = None
    tok_path = os.path.join(folder, "tokenizer.json")
    if os.path.exists(tok_path):
        from minimoe.tokenizer import load_tokenizer
        tokenizer = load_tokenizer(tok_path)
    return Model(cfg, params=params, tokenizer=tokenizer)


def check_params(params: dict, cfg: Config, source: str, dtype=np.float32) -> None:
    """Every expected tensor present, none extra, each of the right shape and a float dtype."""
    expected = param_shapes(cfg)
    missing = [n for n in expected if n not in params]
    extra = [n for n in params if n not in expected]
    if missing:
        raise CheckpointError(f"{source}: missing tensor {missing[0]!r} (expected shape "
                              f"{expected[missing[0]]})" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    if extra:
        raise CheckpointError(f"{source}: unexpected tensor {extra[0]!r} (shape {_shape(params[extra[0]])}) "
                              f"that the config does not describe" + (f"; and {len(extra) - 1} more" if len(extra) > 1 else ""))
    for name, shape in expected.items():
        arr = params[name]
        if tuple(_shape(arr)) != tuple(shape):
            raise CheckpointError(f"{source}: tensor {name!r} has shape {tuple(_shape(arr))}, "
                                  f"expected {tuple(shape)} from config.json")
        if not _is_packed(arr) and not np.issubdtype(arr.dtype, np.floating):
            raise CheckpointError(f"{source}: tensor {name!r} has dtype {arr.dtype}, expected a float type")


def _shape(arr):
    return tuple(arr.shape)


def tensor_dtypes(folder: str) -> dict[str, int]:
    """Bytes stored per on-disk dtype in a checkpoint folder's safetensors files (for `info`)."""
    out: dict[str, int] = {}
    for fn in sorted(os.listdir(folder)):
        if fn.endswith(".safetensors") and fn != "expected.safetensors":
            header, _, _ = read_header(os.path.join(folder, fn))
            for info in header.values():
                b, e = info["data_offsets"]
                out[info["dtype"]] = out.get(info["dtype"], 0) + e - b
    return out
