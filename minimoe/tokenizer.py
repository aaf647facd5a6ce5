"""Tokenizers: text <-> integer ids. Stored with a checkpoint as tokenizer.json.

  * HFTokenizer (minimoe/hf_tokenizer/): a Hugging Face tokenizer.json (GPT-2, Llama, Mistral,
    Qwen, gpt-oss, DeepSeek), read without the `tokenizers` package.
  * ByteTokenizer: the 256 byte values of the UTF-8 encoding, plus special tokens after them
    (id 256 is "<|endoftext|>"). Any text encodes; no training needed.
  * CharTokenizer: one id per distinct character of a corpus, sorted (nanoGPT's Shakespeare
    has 65). Small vocabularies make small models; text with unseen characters cannot encode.
"""
from __future__ import annotations

import json
import os

import numpy as np

from minimoe.errors import MinimoeError


class TokenizerError(MinimoeError, ValueError):
    """A tokenizer file or argument that is not usable, or text/ids it cannot encode/decode."""


def _ids(ids, n: int | None) -> list[int]:
    """Token ids as ints, each checked to be in 0..n-1 (n None: only >= 0)."""
    a = np.asarray(ids)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise TokenizerError(f"token ids must be integers, found dtype {a.dtype}")
    out = [int(i) for i in a.ravel()]
    bad = [i for i in out if i < 0 or (n is not None and i >= n)]
    if bad:
        raise TokenizerError(f"token id {bad[0]} is outside this tokenizer's ids 0..{(n or 1) - 1}"
                             if n is not None else f"token id {bad[0]} is negative")
    return out


class ByteTokenizer:
    kind = "byte"

    def __init__(self, special_tokens=("<|endoftext|>",)):
        if not isinstance(special_tokens, (list, tuple)) or not all(isinstance(t, str) for t in special_tokens):
            raise TokenizerError(f"ByteTokenizer: special_tokens must be a list of strings, found "
                                 f"{str(special_tokens)[:80]}")
        self.special_tokens = list(special_tokens)

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.special_tokens)

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids) -> str:
        """Bytes decode as UTF-8 (invalid sequences as U+FFFD); ids past the special tokens, which
        a model with a larger vocabulary can produce, also decode as U+FFFD."""
        ids = _ids(ids, None)
        out, buf = [], bytearray()
        for i in ids:
            if i < 256:
                buf.append(i)
            else:
                out.append(buf.decode("utf-8", errors="replace"))
                buf = bytearray()
                out.append(self.special_tokens[i - 256] if i - 256 < len(self.special_tokens) else "\ufffd")
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "special_tokens": self.special_tokens}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


class CharTokenizer:
    kind = "char"

    def __init__(self, chars):
        if isinstance(chars, str):
            chars = list(chars)
        if not isinstance(chars, (list, tuple)) or not all(isinstance(c, str) and len(c) == 1 for c in chars):
            raise TokenizerError(f"CharTokenizer: chars must be a string (or a list of single characters), "
                                 f"found {str(chars)[:80]}")
        if not chars:
            raise TokenizerError("CharTokenizer: the vocabulary is empty")
        self.chars = list(chars)
        if len(set(self.chars)) != len(self.chars):
            raise TokenizerError("CharTokenizer: duplicate characters in the vocabulary")
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        if not text:
            raise TokenizerError("CharTokenizer.from_text: the corpus is empty")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        try:
            return np.array([self.index[c] for c in text], dtype=np.int64)
        except KeyError as e:
            raise TokenizerError(f"character {e.args[0]!r} is not in this character-level vocabulary "
                                 f"of {self.vocab_size} characters") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in _ids(ids, self.vocab_size))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": "".join(self.chars)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


def tokenizer_from_dict(d: dict, source: str = "tokenizer"):
    if isinstance(d, dict) and "kind" not in d and "model" in d:       # a Hugging Face tokenizer.json
        from minimoe.hf_tokenizer import HFTokenizer
        return HFTokenizer(d, source=source)
    kind = d.get("kind") if isinstance(d, dict) else None
    try:
        if kind == "byte":
            return ByteTokenizer(d.get("special_tokens", ["<|endoftext|>"]))
        if kind == "char":
            if "chars" not in d:
                raise TokenizerError("a char tokenizer needs its \"chars\"")
            return CharTokenizer(d["chars"])
    except TokenizerError as e:
        raise TokenizerError(f"{source}: {e}") from None
    raise TokenizerError(f"{source}: unknown tokenizer kind {str(kind)[:40]!r}; expected 'byte' or 'char', "
                         f"or a Hugging Face tokenizer.json (with a 'model')")


def load_tokenizer(path: str):
    """A tokenizer.json, or a folder holding one -> ByteTokenizer, CharTokenizer or HFTokenizer.
    A Hugging Face folder's tokenizer_config.json / chat_template.jinja give the chat template."""
    from minimoe.io.json_file import read_json
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.exists(path):
        raise TokenizerError(f"{path}: no such tokenizer file")
    tok = tokenizer_from_dict(read_json(path, TokenizerError, expect=dict), source=path)
    if getattr(tok, "kind", None) == "hf":
        from minimoe.hf_tokenizer.tokenizer import read_chat_config
        tok.chat_template, tok.bos_token, tok.eos_token = read_chat_config(os.path.dirname(path))
    return tok
