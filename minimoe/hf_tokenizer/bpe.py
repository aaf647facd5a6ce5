"""Byte-pair encoding, as tokenizer.json's `"model": {"type": "BPE", ...}` applies it to one word.

A word (one piece of text after pre-tokenization) starts as one symbol per character. Then the
merges apply: each merge (a, b) has a rank, its line number in the "merges" list, and at every
step the adjacent pair with the lowest rank is merged (the leftmost one if it occurs twice),
until no adjacent pair has a merge:

    vocab  {"l": 0, "o": 1, "w": 2, "lo": 3, "low": 4}     merges  ["l o", "lo w"]
    "low" -> [l, o, w] -> rank 0 merges l+o -> [lo, w] -> rank 1 merges lo+w -> [low] -> ids [4]

This is the same order as the `tokenizers` package's heap (lowest (rank, position) first), so
the same ids come out, not just ids of the same text. Three flags change the start:

  * ignore_merges (Llama 3, gpt-oss): a word that is itself in the vocabulary is one token,
    whatever the merges would do.
  * byte_fallback (Llama 2, Mixtral): a character that is not in the vocabulary becomes the
    tokens of its UTF-8 bytes, "<0xE2>", "<0x82>", "<0xAC>" for "€", which merges never touch.
  * unk_token / fuse_unk: otherwise an unknown character becomes the unk token (one unk for a
    run of unknown characters with fuse_unk); with no unk_token it is dropped, as in `tokenizers`.

Byte-level vocabularies (GPT-2, Llama 3, Qwen, gpt-oss, DeepSeek) never need the fallback: the
pre-tokenizer has already written every byte as one of 256 printable characters (BYTES_TO_CHARS).
"""
from __future__ import annotations

import heapq

from minimoe.tokenizer import TokenizerError


def bytes_to_chars() -> dict[int, str]:
    """GPT-2's map from the 256 byte values to printable characters, so that byte strings can be
    vocabulary entries in JSON. Printable Latin-1 bytes map to themselves; the other 68 (controls,
    space, \\xad) to chr(256), chr(257), ... in order: b" " is "Ġ" (chr(288)), b"\\n" is "Ċ"."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTES_TO_CHARS = bytes_to_chars()
CHARS_TO_BYTES = {c: b for b, c in BYTES_TO_CHARS.items()}

CACHE_WORDS = 100_000       # words whose ids are remembered (text repeats its words)


class BPE:
    """The BPE model of a tokenizer.json. `encode_word(word)` -> token ids."""

    def __init__(self, vocab: dict[str, int], merges: list, unk_token: str | None = None,
                 byte_fallback: bool = False, fuse_unk: bool = False, ignore_merges: bool = False,
                 source: str = "tokenizer.json"):
        self.vocab = vocab
        self.unk_token, self.byte_fallback, self.fuse_unk = unk_token, byte_fallback, fuse_unk
        self.ignore_merges = ignore_merges
        # (id of a, id of b) -> (rank, id of a+b)
        self.merges: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, merge in enumerate(merges):
            a, b = merge.split(" ", 1) if isinstance(merge, str) else merge   # "a b" or ["a", "b"]
            for part in (a, b, a + b):
                if part not in vocab:
                    raise TokenizerError(f"{source}: merge {rank} ({a!r}, {b!r}) uses {part!r}, "
                                         f"which is not in the vocabulary")
            self.merges[(vocab[a], vocab[b])] = (rank, vocab[a + b])
        self.byte_ids = None
        if byte_fallback:                                   # byte value -> id of "<0xNN>", if present
            self.byte_ids = [vocab.get(f"<0x{b:02X}>") for b in range(256)]
        self.cache: dict[str, list[int]] = {}

    def encode_word(self, word: str) -> list[int]:
        if self.ignore_merges and word in self.vocab:
            return [self.vocab[word]]
        ids = self.cache.get(word)
        if ids is None:
            ids = self.merge(self.symbols(word))
            if len(self.cache) < CACHE_WORDS:
                self.cache[word] = ids
        return list(ids)

    def symbols(self, word: str) -> list[int]:
        """The starting symbols: one id per character, or its byte tokens, or unk. Like
        `tokenizers`, an unk waits until the next known character (or the end) before it is
        written, so that a run of unknown characters can fuse into one."""
        ids: list[int] = []
        unk = None                                          # the unk id waiting to be written
        for ch in word:
            if ch in self.vocab:
                if unk is not None:
                    ids.append(unk)
                    unk = None
                ids.append(self.vocab[ch])
                continue
            if self.byte_ids is not None:
                fallback = [self.byte_ids[b] for b in ch.encode("utf-8")]
                if None not in fallback:
                    ids.extend(fallback)
                    continue
            if self.unk_token is not None:
                if self.unk_token not in self.vocab:
                    raise TokenizerError(f"the unk token {self.unk_token!r} is not in the vocabulary")
                if unk is not None and not self.fuse_unk:
                    ids.append(unk)
                unk = self.vocab[self.unk_token]
        if unk is not None:
            ids.append(unk)
        return ids

    def merge(self, ids: list[int]) -> list[int]:
        """Apply the merges to a list of symbol ids, lowest (rank, position) first.

        Symbols form a linked list (prev/next); merging position i with its right neighbour j
        keeps the result at i and marks j gone. A heap holds candidate merges; one that no longer
        matches its two symbols (a neighbour was merged away first) is skipped when popped."""
        sym: list[int | None] = list(ids)
        n = len(sym)
        prev = [i - 1 for i in range(n)]
        nxt = [i + 1 if i + 1 < n else -1 for i in range(n)]
        heap = []
        for i in range(n - 1):
            m = self.merges.get((sym[i], sym[i + 1]))
            if m is not None:
                heap.append((m[0], i, m[1]))                # (rank, position, id of the merged token)
        heapq.heapify(heap)
        while heap:
            rank, i, new = heapq.heappop(heap)
            j = nxt[i]
            if sym[i] is None or j == -1:
                continue
            m = self.merges.get((sym[i], sym[j]))
            if m is None or m[1] != new:                    # stale: this pair is not there any more
                continue
            sym[i], sym[j] = new, None                      # j joins i
            nxt[i] = nxt[j]
            if nxt[i] != -1:
                prev[nxt[i]] = i
            for a, b in ((prev[i], i), (i, nxt[i])):        # the new pairs around the merged symbol
                if a != -1 and b != -1:
                    m = self.merges.get((sym[a], sym[b]))
                    if m is not None:
                        heapq.heappush(heap, (m[0], a, m[1]))
        return [s for s in sym if s is not None]
