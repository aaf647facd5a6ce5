"""Training text: where it comes from, how it becomes token ids, and how batches are drawn.

Shape legend: B batch, T block (context) length.

Sources (`--data`):
    "pydoc"          the default: Python's reference documentation, from `pydoc_data.topics`, which
                     ships with every CPython (~465,000 characters). No download, no files.
    "shakespeare"    tinyshakespeare (1,115,394 characters), the corpus of char-rnn and nanoGPT,
                     from the cache that `minimoe data shakespeare` fills.
    any other value  the path of a UTF-8 text file.

Tokenisation: "char" (one id per distinct character, sorted: 65 for Shakespeare) or "byte" (the
256 byte values of UTF-8, plus <|endoftext|>). The first 90% of the ids train, the last 10%
validate, as nanoGPT splits them. A batch is B random windows of T+1 consecutive ids: x is the
first T, y the next-token targets.
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass

import numpy as np

from minimoe.errors import DataError
from minimoe.tokenizer import ByteTokenizer, CharTokenizer

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_BYTES = 1_115_394
SHAKESPEARE_MD5 = "6fb458f1232090904fb40fe944165e91"
SHAKESPEARE_FILE = "tinyshakespeare.txt"
SOURCES = ("pydoc", "shakespeare")


# --- where the text comes from --------------------------------------------------------------------
def pydoc_corpus() -> str:
    """Python's reference documentation topics (the text `help('if')` shows), joined in name order."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[name] for name in sorted(topics))


def cache_dir() -> str:
    """$MINIMOE_CACHE, or ~/.cache/minimoe."""
    return os.environ.get("MINIMOE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "minimoe")


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _fetch_url(url: str, timeout: float = 60.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:      # http(s):// and file:// alike
        return r.read()


def verify_shakespeare(data: bytes, source: str) -> None:
    """Raise DataError unless `data` is exactly tinyshakespeare (size, then md5)."""
    if len(data) != SHAKESPEARE_BYTES:
        raise DataError(f"{source}: expected tinyshakespeare of {SHAKESPEARE_BYTES:,} bytes, "
                        f"found {len(data):,} bytes")
    digest = md5_of(data)
    if digest != SHAKESPEARE_MD5:
        raise DataError(f"{source}: tinyshakespeare md5 should be {SHAKESPEARE_MD5}, found {digest}")


def fetch_shakespeare(source: str | None = None, cache: str | None = None, fetch=_fetch_url,
                      force: bool = False) -> str:
    """Put tinyshakespeare into the cache and return its path.

    source: a URL (http, https or file) or a local path; None means the canonical URL.
    An already cached, verified copy is reused unless `force`. The download is checked (size and
    md5) before it is written, atomically, so the cache never holds a partial or wrong file.
    `fetch(url) -> bytes` is replaceable (tests use it to stay offline).
    """
    from minimoe.io.atomic import atomic_write_bytes
    path = os.path.join(cache or cache_dir(), SHAKESPEARE_FILE)
    if not force and os.path.exists(path):
        with open(path, "rb") as f:
            verify_shakespeare(f.read(), path)
        return path
    source = source or SHAKESPEARE_URL
    if "://" in source:
        try:
            data = fetch(source)
        except OSError as e:                                       # URLError is an OSError
            raise DataError(f"could not download {source} ({getattr(e, 'reason', e)}); "
                            f"download it yourself and run `minimoe data shakespeare --from FILE`") from None
    else:
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError as e:
            raise DataError(f"{source}: cannot read ({e.strerror})") from None
    verify_shakespeare(data, source)
    atomic_write_bytes(path, data)
    return path


def shakespeare_path(cache: str | None = None) -> str:
    """The cached tinyshakespeare, or a DataError saying how to get it."""
    path = os.path.join(cache or cache_dir(), SHAKESPEARE_FILE)
    if not os.path.exists(path):
        raise DataError(f"tinyshakespeare is not in the cache ({path}); run `minimoe data shakespeare` "
                        f"to download it, or pass --data PATH to a copy")
    return path


def read_text_file(path: str) -> str:
    """A text file's contents as str, with a DataError for missing, empty or binary files."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if not raw:
        raise DataError(f"{path}: the file is empty")
    if b"\x00" in raw[:1 << 20]:
        raise DataError(f"{path}: looks binary (contains NUL bytes), expected UTF-8 text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (invalid byte 0x{raw[e.start]:02x} at offset {e.start}); "
                        f"expected a UTF-8 text file") from None


def load_text(source: str) -> tuple[str, str]:
    """(text, a short description) for a --data value: "pydoc", "shakespeare" or a path."""
    if source == "pydoc":
        return pydoc_corpus(), "Python's reference documentation (pydoc_data.topics)"
    if source == "shakespeare":
        path = shakespeare_path()
        return read_text_file(path), f"tinyshakespeare ({path})"
    return read_text_file(source), source


# --- from text to batches ---------------------------------------------------------------------------
def make_tokenizer(kind: str, text: str):
    if kind == "char":
        return CharTokenizer.from_text(text)
    if kind == "byte":
        return ByteTokenizer()
    raise DataError(f"tokenizer must be 'char' or 'byte', found {kind!r}")


def encode(tokenizer, text: str) -> np.ndarray:
    """Token ids (n,) int64. Character-level text is encoded with a vectorised lookup (the
    tokenizer's own encode is a Python loop, slow on megabytes); the result is the same."""
    if isinstance(tokenizer, CharTokenizer):
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)         # (n,) code points
        table = np.array([ord(c) for c in tokenizer.chars], dtype=np.uint32)     # (V,) id -> code point
        order = np.argsort(table)                                                # (V,) ids by code point
        pos = np.searchsorted(table[order], codes)                               # (n,) place in that order
        pos = np.minimum(pos, len(table) - 1)
        ok = table[order][pos] == codes
        if not ok.all():
            bad = chr(codes[np.argmin(ok)])
            raise DataError(f"character {bad!r} is not in the tokenizer's {tokenizer.vocab_size} characters")
        return order[pos].astype(np.int64)
    return tokenizer.encode(text)


@dataclass
class Dataset:
    """Token ids split into train and val, and the tokenizer that made them."""
    train: np.ndarray          # (n_train,) int
    val: np.ndarray            # (n_val,) int
    tokenizer: object
    source: str                # the --data value
    description: str
    md5: str                   # of the UTF-8 text, so a resumed run can check it has the same data

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def batch(self, split: str, batch_size: int, block_size: int, rng: np.random.Generator):
        """x, y (B, T) int64: B random windows; y is x shifted left by one (the next tokens)."""
        data = self.train if split == "train" else self.val
        starts = rng.integers(0, len(data) - block_size, size=batch_size)    # (B,), as nanoGPT
        idx = starts[:, None] + np.arange(block_size + 1)                     # (B, T+1)
        chunk = data[idx]                                                     # (B, T+1)
        return chunk[:, :-1], chunk[:, 1:]


def build_dataset(source: str = "pydoc", tokenizer: str | object = "char", block_size: int = 64,
                  val_fraction: float = 0.1, text: str | None = None) -> Dataset:
    """Read `source` (unless `text` is given), tokenise it and split it.

    `tokenizer` is "char", "byte" or a tokenizer object (a resumed run passes its own, so the ids
    mean the same thing). Raises DataError if either split is shorter than one block plus a target.
    """
    if text is None:
        text, description = load_text(source)
    else:
        description = source
    if not text:
        raise DataError(f"{description}: the text is empty")
    if "\x00" in text:
        raise DataError(f"{description}: looks binary (contains NUL characters), expected text")
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1, found {val_fraction}")
    tok = make_tokenizer(tokenizer, text) if isinstance(tokenizer, str) else tokenizer
    ids = encode(tok, text)
    n_train = int(len(ids) * (1 - val_fraction))
    train, val = ids[:n_train], ids[n_train:]
    need = block_size + 2
    if len(train) < need or len(val) < need:
        raise DataError(f"{description}: too short: {len(ids):,} tokens give {len(train):,} for training "
                        f"and {len(val):,} for validation, but each split needs at least {need} "
                        f"(a block of {block_size} plus targets); use a longer text or a smaller --block-size")
    return Dataset(train=train, val=val, tokenizer=tok, source=source, description=description,
                   md5=md5_of(text.encode("utf-8")))
