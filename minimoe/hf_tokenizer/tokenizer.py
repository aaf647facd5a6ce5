"""A Hugging Face tokenizer.json, read and run without the `tokenizers` package.

    tok = minimoe.load_tokenizer("path/to/model")       # a folder or its tokenizer.json
    ids = tok.encode("Hello world")                     # int64 array, BOS added if the file says so
    tok.decode(ids)                                     # "Hello world" (special tokens shown)

Encoding runs the steps of the file in the order `tokenizers` runs them:

  1. added tokens: the text is cut at the added tokens ("<|im_start|>", "<s>" ...) that are not
     "normalized", so that a special token written in the text is one token, never split;
  2. the normalizer runs on each remaining piece (Qwen: NFC; Llama 2: " " -> "▁"), and the
     "normalized" added tokens are cut out of its output;
  3. the pre-tokenizer cuts each piece into words (pipeline.py), each BPE-encoded (bpe.py);
  4. the post-processor adds the template's special tokens (Llama: BOS before the text).

Decoding maps ids to token strings and runs the decoder. Ids with no token are skipped, as
`tokenizers` skips them (a model's embedding often has more rows than the tokenizer has tokens).

Added tokens' flags, as in `tokenizers`: lstrip / rstrip (the token also swallows the white space
to its left / right), single_word (only matches with no word character touching it), normalized
(matched in the normalized text, step 2), special (skipped by decode(..., skip_special_tokens=True)).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import numpy as np

from minimoe.hf_tokenizer import pipeline
from minimoe.hf_tokenizer.bpe import BPE
from minimoe.hf_tokenizer.unicode_regex import WHITE_SPACE_CHARS
from minimoe.io.json_file import read_json
from minimoe.tokenizer import TokenizerError

WORD_CHAR = re.compile(r"\w")


@dataclass
class AddedToken:
    id: int
    content: str
    single_word: bool = False
    lstrip: bool = False
    rstrip: bool = False
    normalized: bool = True
    special: bool = False


@dataclass
class Piece:
    """A piece of the input on its way to ids. `ids` is set once it is tokens (an added token at
    once; other pieces after BPE). `at_start`: the piece begins the input (Metaspace "first")."""
    text: str
    ids: list[int] | None = None
    at_start: bool = False


class AddedTokenMatcher:
    """Finds added tokens in a text: leftmost match first, the longest one there (as `tokenizers`'
    Aho-Corasick automaton does), by a regex alternation of the contents, longest first."""

    def __init__(self, tokens: dict[str, AddedToken]):
        self.tokens = tokens
        alternatives = sorted(tokens, key=len, reverse=True)
        self.regex = re.compile("|".join(map(re.escape, alternatives))) if alternatives else None

    def split(self, text: str) -> list[tuple[str, int | None]]:
        """text -> [(piece, id of the added token or None)], covering the text."""
        if self.regex is None or not text:
            return [(text, None)]
        out, offset = [], 0
        for m in self.regex.finditer(text):
            start, stop = m.span()
            tok = self.tokens[m.group()]
            if tok.single_word and ((start > 0 and WORD_CHAR.match(text[start - 1]))
                                    or (stop < len(text) and WORD_CHAR.match(text[stop]))):
                continue
            if tok.lstrip:                                  # swallow the white space on the left
                start = max(offset, len(text[:start].rstrip(WHITE_SPACE_CHARS)))
            if tok.rstrip:                                  # ... and on the right
                stop = len(text) - len(text[stop:].lstrip(WHITE_SPACE_CHARS))
            if offset < start:
                out.append((text[offset:start], None))
            out.append((text[start:stop], tok.id))
            offset = stop
        if offset < len(text):
            out.append((text[offset:], None))
        return out


class HFTokenizer:
    """A tokenizer.json's BPE tokenizer. Attributes are the pipeline's steps, to print or step into:
    normalizer, pre_tokenizer, model (BPE), post_processor, decoder, added (AddedToken by id)."""
    kind = "hf"

    def __init__(self, spec: dict, source: str = "tokenizer.json"):
        self.spec, self.source = spec, source
        model = spec.get("model")
        if not isinstance(model, dict) or model.get("type", "BPE") != "BPE" or "merges" not in model:
            kind = model.get("type") if isinstance(model, dict) else model
            raise TokenizerError(f"{source}: model type {kind!r} is not supported; minimoe reads BPE "
                                 f"tokenizers (GPT-2, Llama, Mistral, Qwen, gpt-oss, DeepSeek)")
        if model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
            raise TokenizerError(f"{source}: BPE with dropout, continuing_subword_prefix or "
                                 f"end_of_word_suffix is not supported")
        _check_fields(spec, model, source)
        self.model = _built(source, "model", lambda: BPE(
            model["vocab"], model["merges"], model.get("unk_token"), model.get("byte_fallback", False),
            model.get("fuse_unk", False), model.get("ignore_merges", False), source))
        self.normalizer = _built(source, "normalizer", lambda: pipeline.normalizer(spec.get("normalizer"), source))
        self.pre_tokenizer = _built(source, "pre_tokenizer", lambda: pipeline.pre_tokenizer(spec.get("pre_tokenizer"), source))
        self.post_processor = _built(source, "post_processor", lambda: pipeline.post_processor(spec.get("post_processor"), source))
        self.decoder = _built(source, "decoder", lambda: pipeline.decoder(spec.get("decoder"), source))

        self.added = {t["id"]: AddedToken(**{k: t[k] for k in AddedToken.__dataclass_fields__ if k in t})
                      for t in spec.get("added_tokens") or []}
        # the text each added token is matched as, and decoded to: normalized ones in normalized form
        self.added_text = {i: (self.normalizer(t.content) if t.normalized and self.normalizer else t.content)
                           for i, t in self.added.items()}
        self.raw_matcher = AddedTokenMatcher({t.content: t for t in self.added.values()
                                              if t.content and not t.normalized})
        self.normalized_matcher = AddedTokenMatcher({self.added_text[i]: t for i, t in self.added.items()
                                                     if t.content and t.normalized})
        self.id_to_token = {i: s for s, i in self.model.vocab.items()}
        self.id_to_token.update(self.added_text)
        self.special_ids = {i for i, t in self.added.items() if t.special}
        # from tokenizer_config.json / chat_template.jinja beside the file (minimoe.load_tokenizer)
        self.chat_template: str | None = None
        self.bos_token: str | None = None
        self.eos_token: str | None = None

    @property
    def vocab_size(self) -> int:
        return max(self.id_to_token) + 1

    def token_to_id(self, token: str) -> int | None:
        for i, t in self.added.items():
            if t.content == token:
                return i
        return self.model.vocab.get(token)

    # ------------------------------------------------------------------------------------------

    def pieces(self, text: str) -> list[Piece]:
        """Steps 1-3: the input cut into added tokens and pre-tokenized words (no ids yet)."""
        pieces = [Piece(p, None if i is None else [i], at_start=(k == 0))
                  for k, (p, i) in enumerate(self.raw_matcher.split(text)) if p]
        normalized = []
        for p in pieces:                                    # 2: normalize, find normalized added tokens
            if p.ids is not None:
                normalized.append(p)
                continue
            n = self.normalizer(p.text) if self.normalizer else p.text
            normalized += [Piece(q, None if i is None else [i], at_start=p.at_start and k == 0)
                           for k, (q, i) in enumerate(self.normalized_matcher.split(n)) if q]
        if self.pre_tokenizer is None:
            return normalized
        words = []
        for p in normalized:                                # 3: pre-tokenize
            if p.ids is not None:
                words.append(p)
                continue
            words += [Piece(w, None, p.at_start and s == 0) for s, w in self.pre_tokenizer(p.text, p.at_start) if w]
        return words

    def encode(self, text: str, add_special_tokens: bool = True) -> np.ndarray:
        """text -> token ids (int64). add_special_tokens: apply the post-processor's template
        (BOS for Llama, Mistral and DeepSeek; nothing for GPT-2, Qwen and gpt-oss), as
        `tokenizers`' encode(text) does by default."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode: expected a str, found {type(text).__name__}")
        ids: list[int] = []
        for p in self.pieces(text):
            ids += p.ids if p.ids is not None else self.model.encode_word(p.text)
        if add_special_tokens and self.post_processor is not None:
            ids = self.post_processor(ids)
        return np.array(ids, dtype=np.int64)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """token ids -> text. Special tokens are written out unless skip_special_tokens."""
        tokens = []
        for i in np.asarray(ids, dtype=np.int64).ravel().tolist():
            token = self.id_to_token.get(i)
            if token is None or (skip_special_tokens and i in self.special_ids):
                continue
            tokens.append(token)
        if self.decoder is None:
            return " ".join(tokens)
        return "".join(self.decoder.decode(tokens))

    def to_dict(self) -> dict:
        return self.spec

    def to_json(self) -> str:
        return json.dumps(self.spec, ensure_ascii=False)

    def __repr__(self) -> str:
        return (f"HFTokenizer({self.source!r}, vocab_size={self.vocab_size}, "
                f"added_tokens={len(self.added)}, pre_tokenizer={type(self.pre_tokenizer).__name__})")


def _check_fields(spec: dict, model: dict, source: str) -> None:
    """The fields every step reads, by type: the vocabulary maps strings to ids, the merges are a
    list, each added token has an int id, a string content and boolean flags, and every pipeline
    step is an object or null. (Each step checks its own insides; _built names what is left.)"""
    vocab = model.get("vocab")
    if not (isinstance(vocab, dict) and vocab and all(type(i) is int and i >= 0 for i in vocab.values())):
        raise TokenizerError(f"{source}: model.vocab must be a non-empty object of token -> id (an integer >= 0)")
    if not isinstance(model["merges"], list):
        raise TokenizerError(f"{source}: model.merges must be a list, found {type(model['merges']).__name__}")
    for key in ("unk_token",):
        if model.get(key) is not None and not isinstance(model[key], str):
            raise TokenizerError(f"{source}: model.{key} must be a string or null, found {model[key]!r}")
    for key in ("byte_fallback", "fuse_unk", "ignore_merges"):
        if not isinstance(model.get(key, False), bool):
            raise TokenizerError(f"{source}: model.{key} must be true or false, found {model[key]!r}")
    added = spec.get("added_tokens") or []
    flags = [k for k, f in AddedToken.__dataclass_fields__.items() if f.type == "bool"]
    if not isinstance(added, list) or not all(
            isinstance(t, dict) and type(t.get("id")) is int and t["id"] >= 0 and isinstance(t.get("content"), str)
            and all(isinstance(t.get(k, False), bool) for k in flags) for t in added):
        raise TokenizerError(f"{source}: added_tokens must be a list of objects with an integer id >= 0, "
                             f"a string content and true/false flags {flags}")
    for step in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        if spec.get(step) is not None and not isinstance(spec[step], dict):
            raise TokenizerError(f"{source}: {step} must be an object or null, found {str(spec[step])[:60]}")


def _built(source: str, what: str, make):
    """make(), with a malformed part of the file (a missing key, a value of the wrong type inside a
    step) reported as an error naming the step, not a raw exception from deep inside."""
    try:
        return make()
    except TokenizerError:
        raise
    except (LookupError, TypeError, ValueError, AttributeError, re.error) as e:
        raise TokenizerError(f"{source}: the {what} is malformed ({type(e).__name__}: {str(e)[:80]})") from None


def read_chat_config(folder: str) -> tuple[str | None, str | None, str | None]:
    """(chat template, bos token, eos token) from tokenizer_config.json, chat_template.jinja or
    chat_template.json in a model folder; None where absent."""
    template = bos = eos = None
    config_path = os.path.join(folder, "tokenizer_config.json")
    if os.path.exists(config_path):
        config = read_json(config_path, TokenizerError, expect=dict)
        template = config.get("chat_template")
        if isinstance(template, list):                      # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        bos, eos = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
    jinja_path = os.path.join(folder, "chat_template.jinja")
    json_path = os.path.join(folder, "chat_template.json")
    if os.path.exists(jinja_path):
        try:
            with open(jinja_path, "rb") as f:
                template = f.read().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TokenizerError(f"{jinja_path}: cannot read it as UTF-8 text ({type(e).__name__})") from None
    elif os.path.exists(json_path):
        template = read_json(json_path, TokenizerError, expect=dict).get("chat_template", template)
    if template is not None and not isinstance(template, str):
        raise TokenizerError(f"{folder}: the chat template must be a string, found {type(template).__name__}")
    return template, bos, eos


def _token_text(token) -> str | None:
    """tokenizer_config.json writes a token as "<s>" or as {"content": "<s>", ...}."""
    if isinstance(token, dict):
        return token.get("content")
    return token if isinstance(token, str) else None
