"""Reading JSON that came from outside (config.json, tokenizer.json, a shard index, a training
state, a safetensors header) with one clear error for every way it can be wrong.

    d = read_json("ckpt/config.json", CheckpointError, expect=dict)

A file that is missing, a folder, unreadable, not UTF-8, not JSON, nested deeper than Python's
parser recurses (about 1000 levels), has a key twice, or is not the expected kind of value (a
JSON object, say) raises `error` with the path and the reason. Messages quote no bytes of the
file, only positions.
"""
from __future__ import annotations

import json

from minimoe.errors import MinimoeError


def parse_json(raw: bytes | str, source: str, error=MinimoeError, expect: type | None = None):
    """The JSON value in `raw` (bytes are decoded as UTF-8), or `error` naming `source`."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(f"{source}: not UTF-8 text (invalid byte at offset {e.start})") from None
    try:
        value = json.loads(raw, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise error(f"{source}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise error(f"{source}: JSON nested too deeply to read") from None
    except _Duplicate as e:
        raise error(f"{source}: the key {e.key!r} appears twice in one JSON object") from None
    if expect is not None and not isinstance(value, expect):
        raise error(f"{source}: expected a JSON {_KIND.get(expect, expect.__name__)}, "
                    f"found {_KIND.get(type(value), type(value).__name__)}")
    return value


def read_json(path, error=MinimoeError, expect: type | None = None):
    """parse_json of the file at `path`; a missing or unreadable file is `error` too."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise error(f"{path}: missing") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, expected a JSON file") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror})") from None
    return parse_json(raw, str(path), error, expect)


_KIND = {dict: "object", list: "array", str: "string", int: "number", float: "number",
         bool: "true/false", type(None): "null"}


class _Duplicate(Exception):
    def __init__(self, key):
        self.key = key


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise _Duplicate(k)
        d[k] = v
    return d
