"""A small, strict reader for the safetensors format, with clear errors.

The format (https://github.com/huggingface/safetensors):

    bytes 0..8         N, the header length, a little-endian uint64
    bytes 8..8+N       a JSON header: {name: {"dtype": "F32", "shape": [..], "data_offsets": [b, e]},
                                       "__metadata__": {str: str}}
    bytes 8+N..        the tensors' data; tensor `name` is bytes [b, e) of this region, row-major,
                       little-endian

We read it ourselves (writing goes through the `safetensors` package) because NumPy has no
bfloat16: a BF16 tensor is read as uint16 and widened to float32 by a 16-bit shift, which is
exact. Reading checks every offset against the file size, so a truncated or corrupt file gives
an error that names the file and the tensor, not a crash deep inside.
"""
from __future__ import annotations

import json
import os
import struct

import numpy as np

from minimoe.errors import CheckpointError
from minimoe.quant.bf16 import bf16_to_float32

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
          "BOOL": np.bool_}
MAX_HEADER = 100 * 1024 * 1024


def read_header(path: str) -> tuple[dict, dict, int]:
    """(tensors {name: {"dtype", "shape", "data_offsets"}}, metadata, data start) of a file."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated: {size} bytes, too short for a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, MAX_HEADER):
                raise CheckpointError(f"{path}: corrupt or truncated: header claims {n} bytes, "
                                      f"file has {size - 8} after the length field")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", {}) or {}
    data_start = 8 + n
    data_size = size - data_start
    for name, info in header.items():
        try:
            dtype, shape, (b, e) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry {info!r}") from None
        if dtype not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype}; minimoe reads "
                                  f"{', '.join(DTYPES)}")
        expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPES[dtype]).itemsize
        if not (0 <= b <= e) or e - b != expected:
            raise CheckpointError(f"{path}: tensor {name!r}: offsets [{b}, {e}) do not fit "
                                  f"{dtype} {shape} ({expected} bytes)")
        if e > data_size:
            raise CheckpointError(f"{path}: truncated: tensor {name!r} ends at byte {data_start + e}, "
                                  f"the file has {size} bytes")
    return header, metadata, data_start


def read_tensors(path: str, to_float32: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """({name: array}, metadata). BF16 always comes back as float32; with to_float32, F16 and
    F64 do too. Arrays are read into memory (no file handle stays open)."""
    header, metadata, start = read_header(path)
    out = {}
    with open(path, "rb") as f:
        for name, info in header.items():
            b, e = info["data_offsets"]
            f.seek(start + b)
            buf = f.read(e - b)
            arr = np.frombuffer(buf, dtype=np.dtype(DTYPES[info["dtype"]]).newbyteorder("<"))
            arr = arr.reshape(info["shape"])
            if info["dtype"] == "BF16":                  # bfloat16 = the top 16 bits of a float32
                arr = bf16_to_float32(arr)
            elif to_float32 and info["dtype"] in ("F16", "F64"):
                arr = arr.astype(np.float32)
            out[name] = np.array(arr)                    # own, writable, native byte order
    return out, metadata


def dtype_name(path: str, name: str) -> str:
    return read_header(path)[0][name]["dtype"]
