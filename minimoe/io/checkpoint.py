"""minimoe checkpoints: a folder with config.json, model.safetensors and (optionally) tokenizer.json.

    config.json         the Config, plus "model_type": "minimoe"
    model.safetensors   one tensor per parameter, named as minimoe/params.py names them.
                        A packed (quantized) weight is stored as its uint8 GGUF blocks under the
                        same name; the header's __metadata__["minimoe.quant"] maps each packed
                        name to its format and logical shape. Nothing is unpacked on disk.
                        A bf16 or fp16 weight (minimoe/quant/bf16.py) is stored as BF16 or F16.
    tokenizer.json      the tokenizer the model was trained with

`load(folder)` reads a minimoe checkpoint or a Hugging Face model folder (see minimoe/io/hf.py),
memory-mapped: the tensors are views of the files, held as stored, widened to `dtype`, or
quantized while loading with `recipe` (minimoe/io/mapped.py).
Everything read is checked before the Model is built: the config's fields and types, the
safetensors header, the packed-tensor metadata, every tensor's name, shape and dtype against the
Config, that every weight is finite (skip with check_finite=False, for speed), and that the
tokenizer fits the vocabulary. Each problem is a CheckpointError naming the file and tensor.

`save` replaces the three files together (minimoe/io/atomic.py, atomic_files): until the new
checkpoint is complete on disk the folder holds the old one, and after that the new one, whole.
"""
from __future__ import annotations

import os

import numpy as np

from minimoe.config import Config, ConfigError
from minimoe.errors import CheckpointError
from minimoe.io.atomic import atomic_files, recover
from minimoe.io.json_file import parse_json, read_json
from minimoe.io.safetensors_file import map_tensors, read_header, write_safetensors
from minimoe.params import param_shapes

QUANT_KEY = "minimoe.quant"
HALF_CODES = {"bf16": "BF16", "fp16": "F16"}    # a bf16/fp16 QTensor's safetensors dtype
FINITE_CHUNK = 1 << 22          # values checked at a time by check_finite (bounds its scratch memory)


def _is_packed(arr) -> bool:
    return hasattr(arr, "fmt") and hasattr(arr, "blocks")


def save(model, folder: str) -> None:
    """Write `model` into `folder` (created if needed), replacing what was there as a whole.
    Packed weights stay packed."""
    import json
    tensors, packed, codes = {}, {}, {}
    for name, arr in model.params.items():
        if _is_packed(arr) and arr.fmt in HALF_CODES:                  # 16-bit floats as safetensors has them
            tensors[name] = arr.blocks.view("<u2").reshape(arr.shape)
            codes[name] = HALF_CODES[arr.fmt]
        elif _is_packed(arr):
            tensors[name] = np.ascontiguousarray(arr.blocks)
            packed[name] = {"fmt": arr.fmt, "shape": list(arr.shape)}
        else:
            tensors[name] = np.ascontiguousarray(arr)
    metadata = {"format": "minimoe"}
    if packed:
        metadata[QUANT_KEY] = json.dumps(packed)
    with atomic_files(folder) as stage:
        stage.write("model.safetensors", lambda path: write_safetensors(path, tensors, metadata, codes))
        if model.tokenizer is not None:
            stage.write_text("tokenizer.json", model.tokenizer.to_json() + "\n")
        else:
            stage.remove("tokenizer.json")                 # an old one would not fit this model
        stage.write_text("config.json", model.config.to_json() + "\n")


def load(folder: str, dtype=None, check_finite: bool = True, recipe=None):
    """Load a minimoe checkpoint, a Hugging Face model folder or a .gguf file as a Model.

    The safetensors files are memory-mapped (minimoe/io/mapped.py): with dtype None every tensor
    is held as stored (float32, bf16/fp16 or packed, no copy); dtype=np.float32 widens every float
    tensor to float32, as minimoe did before mapping. `recipe` ("q8_0", "q4_0", "experts-mxfp4",
    a dict {component: format}; minimoe/quant/model.py) quantizes the matrices it names while
    loading, one tensor at a time. check_finite=False skips the scan of every weight for NaN and
    inf (a pass over all the bytes)."""
    folder = os.fspath(folder)
    if folder.endswith(".gguf") and not os.path.isdir(folder):
        from minimoe.io.gguf_file import load_gguf
        model = load_gguf(folder)
        if recipe is not None:                             # (GGUF is read whole: quantize after)
            from minimoe.quant.model import quantize_model
            model = quantize_model(model, recipe)
        return model
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: no such model folder")
    recover(folder)                                        # finish or drop an interrupted save
    config_path = os.path.join(folder, "config.json")
    if not os.path.exists(config_path):
        raise CheckpointError(f"{folder}: no config.json (expected a minimoe checkpoint or a "
                              f"Hugging Face model folder)")
    raw = read_json(config_path, CheckpointError, expect=dict)
    model_type = raw.get("model_type")
    if model_type == "minimoe":
        return _load_minimoe(folder, raw, config_path, dtype, check_finite, recipe)
    from minimoe.io import hf
    if isinstance(model_type, str) and model_type in hf.LOADERS:
        return hf.load(folder, raw, dtype, check_finite, recipe)
    what = "no model_type field" if model_type is None else f"unknown model_type {str(model_type)[:40]!r}"
    raise CheckpointError(f"{config_path}: {what}; minimoe loads 'minimoe' and {sorted(hf.LOADERS)}")


def _load_minimoe(folder, raw, config_path, dtype, check_finite, recipe=None):
    from minimoe.io.mapped import hold
    from minimoe.model import Model
    try:
        cfg = Config.from_dict(raw, source=config_path)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    path = os.path.join(folder, "model.safetensors")
    if not os.path.exists(path):
        raise CheckpointError(f"{folder}: missing model.safetensors")
    tensors, metadata, _ = map_tensors(path)
    params = dict(tensors)
    for name, (fmt, shape) in packed_entries(metadata, tensors, path).items():
        from minimoe.quant import QTensor
        try:
            params[name] = QTensor(fmt=fmt, shape=tuple(shape), blocks=tensors[name])
        except ValueError as e:
            raise CheckpointError(f"{path}: packed tensor {name!r}: {e}") from None
    check_params(params, cfg, path, dtype)
    params = hold(params, cfg, path, recipe, dtype, check_finite)
    tokenizer = None
    tok_path = os.path.join(folder, "tokenizer.json")
    if os.path.exists(tok_path):
        from minimoe.tokenizer import load_tokenizer
        tokenizer = load_tokenizer(tok_path)
        check_tokenizer(tokenizer, cfg, tok_path)
    return Model(cfg, params=params, tokenizer=tokenizer)


def packed_entries(metadata: dict, tensors: dict, path: str) -> dict[str, tuple[str, list]]:
    """{name: (fmt, logical shape)} from the header's __metadata__["minimoe.quant"], every entry
    checked: a JSON object per tensor the file has, holding a format name and a shape, describing
    a tensor stored as bytes (U8)."""
    if QUANT_KEY not in metadata:
        return {}
    where = f"{path}: __metadata__[{QUANT_KEY!r}]"
    packed = parse_json(metadata[QUANT_KEY], where, CheckpointError, expect=dict)
    out = {}
    for name, info in packed.items():
        if name not in tensors:
            raise CheckpointError(f"{where} describes tensor {name!r}, which the file does not have")
        ok = (isinstance(info, dict) and isinstance(info.get("fmt"), str) and isinstance(info.get("shape"), list)
              and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in info["shape"]))
        if not ok:
            raise CheckpointError(f"{where}: tensor {name!r} must be described as "
                                  f'{{"fmt": "q4_0", "shape": [rows, cols]}}, found {str(info)[:80]}')
        if tensors[name].dtype != np.uint8:
            raise CheckpointError(f"{path}: packed tensor {name!r} is stored as {tensors[name].dtype}, "
                                  f"expected its blocks as bytes (U8)")
        out[name] = (info["fmt"], info["shape"])
    return out


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
        if not _is_packed(arr) and not (np.issubdtype(arr.dtype, np.floating) or arr.dtype == np.uint16):
            raise CheckpointError(f"{source}: tensor {name!r} has dtype {arr.dtype}, expected a float type")


def first_nonfinite(arr) -> int | None:
    """The flat index of the first NaN or inf in a float array or a packed tensor (as it decodes),
    or None. A float array is scanned a chunk at a time; a packed one by its blocks' scales."""
    if _is_packed(arr):                           # the format says which blocks (from their scales)
        spec = arr.format
        rows = arr.blocks.reshape(-1, spec.BLOCK_BYTES)                    # (N, BB), one block a row
        if hasattr(spec, "nonfinite_blocks"):                              # a chunk of blocks at a time
            step = max(1, FINITE_CHUNK // spec.BLOCK_SIZE)
            bad = np.concatenate([np.flatnonzero(spec.nonfinite_blocks(rows[i:i + step])) + i
                                  for i in range(0, len(rows), step)] or [np.zeros(0, np.int64)])
        else:                                                              # decode them, a chunk at a time
            step = max(1, FINITE_CHUNK // spec.BLOCK_SIZE)
            with np.errstate(over="ignore", invalid="ignore"):
                bad = np.concatenate([np.flatnonzero(~np.isfinite(spec.dequantize_blocks(rows[i:i + step])).all(axis=1)) + i
                                      for i in range(0, len(rows), step)] or [np.zeros(0, np.int64)])
        if not bad.size:
            return None
        with np.errstate(over="ignore", invalid="ignore"):
            values = spec.dequantize_blocks(rows[bad[:1]])[0]              # (BS,) the first such block
        return int(bad[0]) * spec.BLOCK_SIZE + int(np.argmax(~np.isfinite(values)))
    flat = arr.reshape(-1)
    for start in range(0, flat.size, FINITE_CHUNK):
        bad = ~np.isfinite(flat[start:start + FINITE_CHUNK])
        if bad.any():
            return start + int(np.argmax(bad))
    return None


def check_finite_one(name: str, arr, source: str) -> None:
    """Refuse a weight holding NaN or inf: it would make every output NaN (greedy decoding then
    silently emits token 0), so the checkpoint is corrupt."""
    i = first_nonfinite(arr)
    if i is not None:
        where = tuple(int(j) for j in np.unravel_index(i, tuple(arr.shape)))
        raise CheckpointError(f"{source}: tensor {name!r} holds a non-finite value (NaN or inf) at "
                              f"index {where}; the weights are corrupt (load with check_finite=False, "
                              f"or --skip-finite-check, to load them anyway)")


def check_tokenizer(tokenizer, cfg: Config, source: str) -> None:
    """Every id the tokenizer encodes text to must be embeddable (a byte tokenizer's are the 256
    bytes: its special tokens are not made by encode), and a character tokenizer must decode every
    id the model can produce (a byte tokenizer prints ids past its own as U+FFFD)."""
    n, V = tokenizer.vocab_size, cfg.vocab_size
    encoded = 256 if tokenizer.kind == "byte" else n
    if encoded > V:
        raise CheckpointError(f"{source}: the tokenizer encodes text as ids 0..{encoded - 1} but the model's "
                              f"vocabulary has {V} (vocab_size in config.json); ids {V}..{encoded - 1} "
                              f"have no embedding")
    if tokenizer.kind == "char" and n < V:
        raise CheckpointError(f"{source}: the character tokenizer has {n} characters but the model's "
                              f"vocabulary has {V} (vocab_size in config.json); ids {n}..{V - 1} could "
                              f"not be decoded")


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
