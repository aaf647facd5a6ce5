"""tokenizer.json's regexes in Python's `re`: the Unicode classes spelled out as ranges.

The split patterns of tokenizer.json are Oniguruma regexes (the engine the `tokenizers` package
uses), full of Unicode property classes: \\p{L} letters, \\p{N} numbers, \\p{Lu} upper-case
letters, \\p{M} marks, \\p{P} punctuation, \\p{S} symbols. Python's `re` has none of them. So
`compile_regex(pattern)` rewrites the pattern: each class becomes the list of code-point ranges of its
Unicode general categories, computed once from `unicodedata`:

    \\p{N}             ->  [0-9\\xb2\\xb3\\xb9\\xbc-\\xbe\\u0660-\\u0669...]
    [^\\s\\p{L}\\p{N}]    ->  [^\\t-\\r \\x85\\xa0...A-Za-z\\xaa\\xb5...0-9\\xb2...]

\\s is spelled out too: Oniguruma's \\s is Unicode's White_Space property (the 25 characters of
WHITE_SPACE below), while Python's also matches the separators \\x1c-\\x1f.

Everything else in the patterns (alternation, (?i:...), lookahead (?!\\S), {1,3}) means the same
in both engines. Constructs that do not (class intersection &&, scripts like \\p{Han}, \\w, \\b, $)
raise a TokenizerError instead of silently matching something else.
"""
from __future__ import annotations

import functools
import re
import unicodedata

from minimoe.tokenizer import TokenizerError

# Unicode's White_Space property: Oniguruma's \s (and Rust's char::is_whitespace)
WHITE_SPACE = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680),
               (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F),
               (0x3000, 0x3000)]
WHITE_SPACE_CHARS = "".join(chr(c) for a, b in WHITE_SPACE for c in range(a, b + 1))


@functools.lru_cache(maxsize=None)
def category_ranges() -> dict[str, list[tuple[int, int]]]:
    """{"Lu": [(0x41, 0x5A), (0xC0, 0xD6), ...], "Ll": ..., ...}: the code points of each general
    category as (first, last) ranges, from one pass over all 0x110000 code points (~0.3 s)."""
    ranges: dict[str, list[tuple[int, int]]] = {}
    start, current = 0, unicodedata.category("\0")
    for cp in range(1, 0x110000):
        cat = unicodedata.category(chr(cp))
        if cat != current:
            ranges.setdefault(current, []).append((start, cp - 1))
            start, current = cp, cat
    ranges.setdefault(current, []).append((start, 0x10FFFF))
    return ranges


def _escape(cp: int) -> str:
    return f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}"


def _class_body(ranges) -> str:
    """[(0x41, 0x5A), (0xAA, 0xAA)] -> '\\x41-\\x5a\\xaa': the inside of a [...] class."""
    return "".join(_escape(a) if a == b else f"{_escape(a)}-{_escape(b)}" for a, b in sorted(ranges))


@functools.lru_cache(maxsize=None)
def property_class(name: str) -> str:
    """\\p{name} as the inside of a character class. name is a general category ("Lu") or its
    one-letter group ("L" = Lu + Ll + Lt + Lm + Lo)."""
    cats = category_ranges()
    if len(name) == 1:
        members = [c for c in cats if c[0] == name]
    else:
        members = [name] if name in cats else []
    if not members:
        raise TokenizerError(f"regex class \\p{{{name}}} is not supported: minimoe knows the Unicode "
                             f"general categories (L, Lu, Ll, Lt, Lm, Lo, M, N, Nd, P, S, Z, C, ...), "
                             f"not scripts or other properties")
    return _class_body([r for c in members for r in cats[c]])


UNSUPPORTED = {"w": "\\w", "W": "\\W", "b": "\\b", "B": "\\B", "A": "\\A", "z": "\\z", "Z": "\\Z",
               "G": "\\G", "h": "\\h", "H": "\\H", "R": "\\R", "X": "\\X", "K": "\\K"}


def translate(pattern: str) -> str:
    """An Oniguruma pattern from tokenizer.json -> the same pattern for Python's `re`."""
    out, i, in_class = [], 0, False
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            e = pattern[i + 1]
            if e in "pP":                                   # \p{L} or \pL
                if i + 2 < n and pattern[i + 2] == "{":
                    close = pattern.find("}", i + 3)
                    if close < 0:
                        raise TokenizerError(f"regex {pattern!r}: unclosed \\{e}{{ at position {i}")
                    name, i = pattern[i + 3:close], close + 1
                else:
                    name, i = pattern[i + 2:i + 3], i + 3
                body, negated = property_class(name), e == "P"
            elif e in "sS":
                body, negated, i = _class_body(WHITE_SPACE), e == "S", i + 2
            elif e in UNSUPPORTED:
                raise TokenizerError(f"regex {pattern!r}: {UNSUPPORTED[e]} means different things in "
                                     f"Oniguruma and Python's re; minimoe does not translate it")
            else:                                           # \n, \-, \[, \d, \u3040 ...: the same in re
                out.append(pattern[i:i + 2])
                i += 2
                continue
            if in_class:
                if negated:
                    raise TokenizerError(f"regex {pattern!r}: a negated class \\{e} inside [...] "
                                         f"is not supported")
                out.append(body)
            else:
                out.append(f"[{'^' if negated else ''}{body}]")
            continue
        if in_class:
            if c == "[" or (c == "&" and pattern[i + 1:i + 2] == "&"):
                raise TokenizerError(f"regex {pattern!r}: nested classes and && intersections are "
                                     f"not supported")
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            out.append(c)
            i += 1
            if pattern[i:i + 1] == "^":                     # [^...]
                out.append("^")
                i += 1
            if pattern[i:i + 1] == "]":                     # []...] : a leading ] is a literal
                out.append("\\]")
                i += 1
            continue
        elif c == "$":
            raise TokenizerError(f"regex {pattern!r}: $ means 'end of line' in Oniguruma and 'end "
                                 f"of text' in Python's re; minimoe does not translate it")
        out.append(c)
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=None)
def compile_regex(pattern: str) -> re.Pattern:
    """re.compile of the translated pattern (cached: tokenizers share their patterns)."""
    try:
        return re.compile(translate(pattern))
    except re.error as e:
        raise TokenizerError(f"regex {pattern!r} does not compile in Python's re: {e}") from None
