"""A small, strict reader and writer for the safetensors format, with clear errors.

The format (https://github.com/huggingface/safetensors):

    bytes 0..8         N, the header length, a little-endian uint64
    bytes 8..8+N       a JSON header: {name: {"dtype": "F32", "shape": [..], "data_offsets": [b, e]},
                                       "__metadata__": {str: str}}, padded with spaces
    bytes 8+N..        the tensors' data; tensor `name` is bytes [b, e) of this region, row-major,
                       little-endian. The tensors tile the region exactly: no overlaps, no gaps.

We read it ourselves because NumPy has no bfloat16: a BF16 tensor is read as uint16 and widened to
float32 by a 16-bit shift, which is exact. Or it is not read at all: `map_tensors` returns each
tensor as a view of the file, memory-mapped (np.memmap), so a 13 GB checkpoint costs no memory
until a page of it is used (BF16 comes back as its uint16 bits; see minimoe/io/pages.py for
what a mapped tensor holds in memory). The reader checks the header as strictly as the
safetensors package does (types of every field, shapes of non-negative integers, offsets that fit
the shape, the file and each other), so a truncated or corrupt file, or one whose tensors share
bytes, gives an error that names the file and the tensor, never a crash deep inside NumPy.

We write it ourselves too (write_safetensors, or write_streaming for tensors made a piece at a
time, such as `minimoe bench big`'s 13 GB of random weights), with ordinary file writes, so that a full disk raises an OSError
(which minimoe/io/atomic.py turns into an error naming the file); the bytes are what the
safetensors package reads (tests/test_checkpoint.py checks that they load equal).
"""
from __future__ import annotations

import json
import os
import struct

import numpy as np

from minimoe.errors import CheckpointError
from minimoe.quant.bf16 import bf16_to_float32

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U64": np.uint64,
          "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_}
CODES = {np.dtype(t): code for code, t in DTYPES.items() if code != "BF16"}   # numpy dtype -> code, for writing
MAX_HEADER = 100 * 1024 * 1024


def read_header(path: str) -> tuple[dict, dict, int]:
    """(tensors {name: {"dtype", "shape", "data_offsets"}}, metadata, data start) of a file,
    every field checked."""
    from minimoe.io.json_file import parse_json
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated: {size} bytes, too short for a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:                    # (n itself is not printed: they are the file's first bytes)
                raise CheckpointError(f"{path}: corrupt or truncated: the header length field points past "
                                      f"the end of the file ({size} bytes); not a safetensors file?")
            if n > MAX_HEADER:
                raise CheckpointError(f"{path}: the safetensors header is over {MAX_HEADER >> 20} MiB; "
                                      f"not a safetensors file?")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    header = parse_json(raw, f"{path}: corrupt safetensors header", CheckpointError, expect=dict)
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: __metadata__ must be a JSON object of strings, found "
                              f"{_brief(metadata)}")
    data_start = 8 + n
    data_size = size - data_start
    for name, info in header.items():
        _check_entry(path, name, info, data_size)
    _check_tiling(path, header, data_size)
    return header, metadata, data_start


def _check_entry(path: str, name: str, info, data_size: int) -> None:
    what = f"{path}: tensor {name!r}"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise CheckpointError(f"{what}: a header entry must be an object with dtype, shape and "
                              f"data_offsets, found {_brief(info)}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CheckpointError(f"{what}: dtype {_brief(dtype)} is not one of {', '.join(DTYPES)}")
    if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
        raise CheckpointError(f"{what}: shape must be a list of non-negative integers, found {_brief(shape)}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise CheckpointError(f"{what}: data_offsets must be two integers [begin, end], found {_brief(offsets)}")
    b, e = offsets
    nbytes = int(np.prod(shape, dtype=object)) * np.dtype(DTYPES[dtype]).itemsize   # Python ints: no overflow
    if not 0 <= b <= e or e - b != nbytes:
        raise CheckpointError(f"{what}: data_offsets [{b}, {e}) do not fit {dtype} {shape} "
                              f"({nbytes} bytes)")
    if e > data_size:
        raise CheckpointError(f"{path}: truncated: tensor {name!r} ends at byte {e} of the data, "
                              f"which has {data_size} bytes")


def _check_tiling(path: str, header: dict, data_size: int) -> None:
    """The tensors' byte ranges, in order, must follow one another exactly from 0 to the end:
    an overlap would let one tensor read another's bytes."""
    end, prev = 0, None
    for name, info in sorted(header.items(), key=lambda kv: tuple(kv[1]["data_offsets"])):
        b, e = info["data_offsets"]
        if b < end:
            raise CheckpointError(f"{path}: tensors {prev!r} and {name!r} overlap (bytes [{b}, {min(e, end)}) "
                                  f"of the data belong to both)")
        if b > end:
            raise CheckpointError(f"{path}: bytes [{end}, {b}) of the data belong to no tensor "
                                  f"(before {name!r}); the safetensors format has no gaps")
        end, prev = e, name
    if end != data_size:
        raise CheckpointError(f"{path}: {data_size - end} bytes after the last tensor's data; "
                              f"corrupt, or not a safetensors file")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _brief(v) -> str:
    """A short repr for an error message (a header value can be huge)."""
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def read_tensors(path: str, to_float32: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """({name: array}, metadata). BF16 always comes back as float32; with to_float32, F16 and
    F64 do too. Arrays are read into memory (no file handle stays open)."""
    header, metadata, start = read_header(path)
    out = {}
    try:
        with open(path, "rb") as f:
            for name, info in header.items():
                b, e = info["data_offsets"]
                f.seek(start + b)
                buf = f.read(e - b)
                if len(buf) != e - b:
                    raise CheckpointError(f"{path}: truncated while reading tensor {name!r}")
                arr = np.frombuffer(buf, dtype=np.dtype(DTYPES[info["dtype"]]).newbyteorder("<"))
                arr = arr.reshape(info["shape"])
                if info["dtype"] == "BF16":                  # bfloat16 = the top 16 bits of a float32
                    arr = bf16_to_float32(arr)
                elif to_float32 and info["dtype"] in ("F16", "F64"):
                    arr = arr.astype(np.float32)
                out[name] = np.array(arr)                    # own, writable, native byte order
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    return out, metadata


def map_tensors(path: str) -> tuple[dict[str, np.ndarray], dict, dict[str, str]]:
    """({name: array}, metadata, {name: dtype code}) with every array a read-only view of the
    file, memory-mapped: nothing is read until it is used. BF16 tensors come back as their uint16
    bits (code "BF16"). F32 and F64 tensors are mapped copy-on-write, so that a model can train
    on them in place without touching the file; everything else read-only."""
    header, metadata, start = read_header(path)
    arrays, codes = {}, {}
    try:
        for name, info in header.items():
            b, e = info["data_offsets"]
            code, shape = info["dtype"], tuple(info["shape"])
            dtype = np.dtype(DTYPES[code]).newbyteorder("<")
            if e == b:                                     # (mmap cannot map zero bytes)
                arr = np.zeros(shape, dtype)
            else:
                mode = "c" if code in ("F32", "F64") else "r"
                flat = np.memmap(path, dtype=dtype, mode=mode, offset=start + b, shape=((e - b) // dtype.itemsize,))
                arr = np.asarray(flat).reshape(shape)      # a plain ndarray view; the map stays open under it
            arrays[name], codes[name] = arr, code
    except OSError as e:
        raise CheckpointError(f"{path}: cannot map ({e.strerror})") from None
    return arrays, metadata, codes


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None,
                      codes: dict[str, str] | None = None) -> None:
    """Write `tensors` to `path` in the layout above, the header padded with spaces to a multiple
    of 8 bytes (as the safetensors package pads it). `codes` overrides a tensor's dtype code: a
    uint16 array holding bf16 bits is written as {"name": "BF16"}. Not atomic by itself: write to
    a path from minimoe/io/atomic.py."""
    specs = {}
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        code = (codes or {}).get(name) or CODES.get(arr.dtype.newbyteorder("="))
        if code is None:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {arr.dtype}, which safetensors "
                                  f"cannot store")
        specs[name] = (code, arr.shape, lambda arr=arr: [arr])
    write_streaming(path, specs, metadata)


def write_streaming(path: str, specs: dict, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file whose tensors are made a piece at a time: specs is {name: (dtype
    code, shape, pieces)}, where pieces() yields arrays whose bytes, in order, are the tensor's
    (row-major, little-endian). The header is written first, from the shapes. The tensors are laid
    out widest dtype first, then by name, as the safetensors package lays them out: each tensor's
    data then starts at a multiple of its item size, so every mapped view is aligned."""
    order = sorted(specs, key=lambda n: (-np.dtype(DTYPES[specs[n][0]]).itemsize, n))
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name in order:
        code, shape, _ = specs[name]
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPES[code]).itemsize
        header[name] = {"dtype": code, "shape": [int(n) for n in shape], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in order:
            written, (b, e) = 0, header[name]["data_offsets"]
            for piece in specs[name][2]():
                piece = np.ascontiguousarray(piece)
                piece = piece.astype(piece.dtype.newbyteorder("<"), copy=False)   # little-endian on disk
                f.write(piece.reshape(-1).view(np.uint8).data)
                written += piece.nbytes
            if written != e - b:
                raise CheckpointError(f"{path}: tensor {name!r} was given {written} bytes, its shape "
                                      f"{tuple(specs[name][1])} needs {e - b}")


def dtype_name(path: str, name: str) -> str:
    return read_header(path)[0][name]["dtype"]
