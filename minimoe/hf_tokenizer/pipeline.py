"""The steps of a tokenizer.json around its BPE model: normalizer, pre-tokenizer, decoder, and
post-processor, each built from its JSON object by `normalizer(spec)`, `pre_tokenizer(spec)`,
`decoder(spec)` and `post_processor(spec)`.

    text --normalizer--> text --pre-tokenizer--> pieces --BPE--> ids --post-processor--> ids
    ids --vocabulary--> token strings --decoder--> text

The steps the tokenizers minimoe reads use (the `tokenizers` package has more; the others raise
a TokenizerError that names them):

    family                 normalizer              pre-tokenizer                     decoder
    GPT-2                  -                       ByteLevel (its own regex)         ByteLevel
    Llama 3, gpt-oss       -                       Split(regex) + ByteLevel          ByteLevel
    Qwen2/3                NFC                     Split(regex) + ByteLevel          ByteLevel
    DeepSeek-V3            -                       3 x Split(regex) + ByteLevel      ByteLevel
    Llama 2, Mixtral       Prepend("▁") +          -                                 Replace("▁", " ") +
      (legacy files)         Replace(" ", "▁")                                         ByteFallback + Fuse +
    Llama 2, Mixtral       -                       Metaspace(prepend_scheme=first)     Strip(" ", 1, 0)
      (newer files)

Every step is a small object with `__call__`, so `print(tok.pre_tokenizer)` shows the pipeline and
a debugger can step into each one.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from minimoe.hf_tokenizer.bpe import BYTES_TO_CHARS, CHARS_TO_BYTES
from minimoe.hf_tokenizer.unicode_regex import WHITE_SPACE_CHARS, compile_regex
from minimoe.tokenizer import TokenizerError

# the regex of the ByteLevel pre-tokenizer with use_regex=true (GPT-2's)
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def _unsupported(kind: str, spec, source: str):
    name = spec.get("type") if isinstance(spec, dict) else spec
    return TokenizerError(f"{source}: {kind} {name!r} is not supported by minimoe's tokenizer.json "
                          f"reader (see docs/tokenizers.md for the supported steps)")


def _pattern(spec: dict, source: str) -> re.Pattern:
    """{"String": " "} or {"Regex": "\\p{N}{1,3}"} -> a compiled Python regex."""
    if "Regex" in spec:
        return compile_regex(spec["Regex"])
    if "String" in spec:
        return re.compile(re.escape(spec["String"])) if spec["String"] else None
    raise TokenizerError(f"{source}: pattern {spec!r} must be {{'String': ...}} or {{'Regex': ...}}")


def spans(regex: re.Pattern | None, text: str) -> list[tuple[int, int, bool]]:
    """The text cut at the matches of regex: [(start, end, is_match)], covering all of it."""
    out, prev = [], 0
    if regex is not None:
        for m in regex.finditer(text):
            if m.start() == m.end():
                continue
            if prev < m.start():
                out.append((prev, m.start(), False))
            out.append((m.start(), m.end(), True))
            prev = m.end()
    if prev < len(text):
        out.append((prev, len(text), False))
    return out


def split_spans(parts: list[tuple[int, int, bool]], behavior: str) -> list[tuple[int, int]]:
    """What a split does with its matches (SplitDelimiterBehavior), on "a-b" split at "-":
    Isolated ["a", "-", "b"], Removed ["a", "b"], MergedWithPrevious ["a-", "b"],
    MergedWithNext ["a", "-b"], Contiguous (runs of matches or non-matches) ["a", "-", "b"]."""
    behavior = behavior.lower()
    if behavior == "isolated":
        return [(s, e) for s, e, _ in parts]
    if behavior == "removed":
        return [(s, e) for s, e, match in parts if not match]
    out: list[list[int]] = []
    if behavior == "mergedwithnext":
        prev_match = False
        for s, e, match in reversed(parts):
            if match and not prev_match and out:
                out[-1][0] = s
            else:
                out.append([s, e])
            prev_match = match
        return [(s, e) for s, e in reversed(out)]
    prev_match = False
    for s, e, match in parts:
        joins = (match and not prev_match) if behavior == "mergedwithprevious" else (match == prev_match)
        if behavior not in ("mergedwithprevious", "contiguous"):
            raise TokenizerError(f"unknown split behavior {behavior!r}")
        if joins and out:
            out[-1][1] = e
        else:
            out.append([s, e])
        prev_match = match
    return [(s, e) for s, e in out]


# ----------------------------------------------------------------------------------------------
# Normalizers: str -> str
# ----------------------------------------------------------------------------------------------

@dataclass
class Sequence:
    steps: list

    def __call__(self, x):
        for step in self.steps:
            x = step(x)
        return x


@dataclass
class UnicodeForm:
    """NFC, NFD, NFKC or NFKD (Qwen: NFC, so "e" + U+0301 and "é" encode alike)."""
    form: str

    def __call__(self, text: str) -> str:
        return unicodedata.normalize(self.form, text)


@dataclass
class Lowercase:
    def __call__(self, text: str) -> str:
        return text.lower()


@dataclass
class Prepend:
    """Put `prepend` before any non-empty text (Llama 2's "▁" before the first word)."""
    prepend: str

    def __call__(self, text: str) -> str:
        return self.prepend + text if text else text


@dataclass
class Replace:
    """Every match of a pattern -> content (" " -> "▁"). Also a decoder, token by token."""
    regex: re.Pattern | None
    content: str

    def __call__(self, text: str) -> str:
        return text if self.regex is None else self.regex.sub(lambda m: self.content, text)

    def decode(self, tokens: list[str]) -> list[str]:
        return [self(t) for t in tokens]


@dataclass
class StripSpaces:
    """Strip white space at the left and/or right."""
    left: bool
    right: bool

    def __call__(self, text: str) -> str:
        text = text.lstrip(WHITE_SPACE_CHARS) if self.left else text
        return text.rstrip(WHITE_SPACE_CHARS) if self.right else text


def normalizer(spec, source: str = "tokenizer.json"):
    if spec is None:
        return None
    kind = spec.get("type")
    if kind == "Sequence":
        return Sequence([normalizer(s, source) for s in spec["normalizers"]])
    if kind in ("NFC", "NFD", "NFKC", "NFKD"):
        return UnicodeForm(kind)
    if kind == "Lowercase":
        return Lowercase()
    if kind == "Prepend":
        return Prepend(spec["prepend"])
    if kind == "Replace":
        return Replace(_pattern(spec["pattern"], source), spec["content"])
    if kind == "Strip":
        return StripSpaces(spec.get("strip_left", True), spec.get("strip_right", True))
    raise _unsupported("normalizer", spec, source)


# ----------------------------------------------------------------------------------------------
# Pre-tokenizers: a piece of text -> [(start, piece)]. `start` (where the piece begins in the text
# it came from) tells Metaspace's prepend_scheme "first" which piece begins the input.
# ----------------------------------------------------------------------------------------------

@dataclass
class Split:
    """Cut at the matches of a regex (Llama 3's, o200k's ...), keeping them as pieces (Isolated)."""
    regex: re.Pattern | None
    behavior: str
    invert: bool

    def __call__(self, text: str, at_start: bool) -> list[tuple[int, str]]:
        parts = [(s, e, m != self.invert) for s, e, m in spans(self.regex, text)]
        return [(s, text[s:e]) for s, e in split_spans(parts, self.behavior)]


@dataclass
class ByteLevel:
    """Optionally split with GPT-2's regex, then write each UTF-8 byte as its printable character
    (BYTES_TO_CHARS): " world" -> "Ġworld", "é" -> "Ã©"."""
    add_prefix_space: bool
    use_regex: bool

    def __call__(self, text: str, at_start: bool) -> list[tuple[int, str]]:
        if self.add_prefix_space and not text.startswith(" "):
            text = " " + text
        parts = spans(compile_regex(GPT2_PATTERN), text) if self.use_regex else [(0, len(text), False)]
        return [(s, "".join(BYTES_TO_CHARS[b] for b in text[s:e].encode("utf-8"))) for s, e, _ in parts]


@dataclass
class Metaspace:
    """SentencePiece's spaces: " " -> "▁", and a "▁" before the text (always, or only before the
    first piece of the input: prepend_scheme "first"), optionally split before each "▁"."""
    replacement: str
    prepend_scheme: str
    split: bool

    def __call__(self, text: str, at_start: bool) -> list[tuple[int, str]]:
        text = text.replace(" ", self.replacement)
        if not text.startswith(self.replacement) and (
                self.prepend_scheme == "always" or (self.prepend_scheme == "first" and at_start)):
            text = self.replacement + text
        if not self.split:
            return [(0, text)]
        parts = spans(re.compile(re.escape(self.replacement)), text)
        return [(s, text[s:e]) for s, e in split_spans(parts, "MergedWithNext")]

    def decode(self, tokens: list[str]) -> list[str]:
        """"▁" -> " ", except that the first token loses its "▁"s (the prepended one)."""
        drop_first = self.prepend_scheme != "never"
        return [t.replace(self.replacement, "" if i == 0 and drop_first else " ") for i, t in enumerate(tokens)]


@dataclass
class PreSequence:
    steps: list

    def __call__(self, text: str, at_start: bool) -> list[tuple[int, str]]:
        pieces = [(0, text)]
        for step in self.steps:
            pieces = [(s + s2, p2) for s, p in pieces for s2, p2 in step(p, at_start and s == 0) if p2]
        return pieces


def _prepend_scheme(spec: dict) -> str:
    if spec.get("add_prefix_space") is False:
        return "never"
    return spec.get("prepend_scheme", "always")


def pre_tokenizer(spec, source: str = "tokenizer.json"):
    if spec is None:
        return None
    kind = spec.get("type")
    if kind == "Sequence":
        return PreSequence([pre_tokenizer(s, source) for s in spec["pretokenizers"]])
    if kind == "Split":
        return Split(_pattern(spec["pattern"], source), spec["behavior"], spec.get("invert", False))
    if kind == "ByteLevel":
        return ByteLevel(spec.get("add_prefix_space", True), spec.get("use_regex", True))
    if kind == "Metaspace":
        return Metaspace(spec.get("replacement", "▁"), _prepend_scheme(spec), spec.get("split", True))
    raise _unsupported("pre-tokenizer", spec, source)


# ----------------------------------------------------------------------------------------------
# Decoders: token strings -> token strings; the text is their concatenation
# ----------------------------------------------------------------------------------------------

@dataclass
class ByteLevelDecoder:
    """Undo ByteLevel: characters -> bytes -> UTF-8 text (a token with a character outside the
    byte alphabet, like a special token "<｜User｜>", keeps its own UTF-8 bytes)."""

    def decode(self, tokens: list[str]) -> list[str]:
        data = bytearray()
        for t in tokens:
            if all(c in CHARS_TO_BYTES for c in t):
                data.extend(CHARS_TO_BYTES[c] for c in t)
            else:
                data.extend(t.encode("utf-8"))
        return [data.decode("utf-8", errors="replace")]


@dataclass
class ByteFallback:
    """Runs of "<0xNN>" tokens -> their bytes as UTF-8 text; one U+FFFD per byte if they are not
    valid UTF-8."""

    def decode(self, tokens: list[str]) -> list[str]:
        out, run = [], bytearray()
        for t in tokens + [None]:                           # None flushes the last run
            if t is not None and len(t) == 6 and t.startswith("<0x") and t.endswith(">") and _hex(t[3:5]):
                run.append(int(t[3:5], 16))
                continue
            if run:
                try:
                    out.append(run.decode("utf-8"))
                except UnicodeDecodeError:
                    out.extend("\ufffd" * len(run))
                run = bytearray()
            if t is not None:
                out.append(t)
        return out


def _hex(s: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in s)


@dataclass
class Fuse:
    def decode(self, tokens: list[str]) -> list[str]:
        return ["".join(tokens)]


@dataclass
class StripDecoder:
    """Remove up to `start` leading and `stop` trailing `content` characters of each token."""
    content: str
    start: int
    stop: int

    def decode(self, tokens: list[str]) -> list[str]:
        out = []
        for t in tokens:
            a = 0
            while a < min(self.start, len(t)) and t[a] == self.content:
                a += 1
            b = len(t)
            while len(t) - b < self.stop and b > a and t[b - 1] == self.content:
                b -= 1
            out.append(t[a:b])
        return out


@dataclass
class DecoderSequence:
    steps: list

    def decode(self, tokens: list[str]) -> list[str]:
        for step in self.steps:
            tokens = step.decode(tokens)
        return tokens


def decoder(spec, source: str = "tokenizer.json"):
    if spec is None:
        return None
    kind = spec.get("type")
    if kind == "Sequence":
        return DecoderSequence([decoder(s, source) for s in spec["decoders"]])
    if kind == "ByteLevel":
        return ByteLevelDecoder()
    if kind == "Metaspace":
        return Metaspace(spec.get("replacement", "▁"), _prepend_scheme(spec), spec.get("split", True))
    if kind == "Replace":
        return Replace(_pattern(spec["pattern"], source), spec["content"])
    if kind == "ByteFallback":
        return ByteFallback()
    if kind == "Fuse":
        return Fuse()
    if kind == "Strip":
        return StripDecoder(spec["content"], spec.get("start", 0), spec.get("stop", 0))
    raise _unsupported("decoder", spec, source)


# ----------------------------------------------------------------------------------------------
# Post-processors: the model's ids -> the ids with special tokens around them (BOS for Llama)
# ----------------------------------------------------------------------------------------------

@dataclass
class Template:
    """TemplateProcessing's "single" template: [("special", ids) or ("sequence", None)], e.g.
    Llama's "<s> $A" -> [("special", [1]), ("sequence", None)]."""
    parts: list

    def __call__(self, ids: list[int]) -> list[int]:
        out: list[int] = []
        for kind, special in self.parts:
            out.extend(ids if kind == "sequence" else special)
        return out


def post_processor(spec, source: str = "tokenizer.json"):
    """-> a Template (or None: the ids stay as they are)."""
    if spec is None:
        return None
    kind = spec.get("type")
    if kind == "ByteLevel":                                 # changes offsets only, not ids
        return None
    if kind == "Sequence":
        templates = [t for t in (post_processor(s, source) for s in spec["processors"]) if t is not None]
        if len(templates) > 1:
            raise TokenizerError(f"{source}: more than one template post-processor in a Sequence")
        return templates[0] if templates else None
    if kind == "TemplateProcessing":
        parts = []
        for item in spec["single"]:
            if "Sequence" in item:
                parts.append(("sequence", None))
            else:
                name = item["SpecialToken"]["id"]
                if name not in spec.get("special_tokens", {}):
                    raise TokenizerError(f"{source}: post_processor template uses {name!r}, which "
                                         f"its special_tokens do not define")
                parts.append(("special", list(spec["special_tokens"][name]["ids"])))
        return Template(parts)
    if kind in ("RobertaProcessing", "BertProcessing"):     # cls $A sep
        return Template([("special", [spec["cls"][1]]), ("sequence", None), ("special", [spec["sep"][1]])])
    raise _unsupported("post-processor", spec, source)
