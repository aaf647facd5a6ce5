"""Hugging Face tokenizers read from tokenizer.json, in plain Python (no `tokenizers` package).

    tokenizer.py      HFTokenizer: added tokens, then normalizer -> pre-tokenizer -> BPE -> template
    pipeline.py       the normalizers, pre-tokenizers, decoders and post-processors
    bpe.py            the BPE model: merges by rank, byte fallback, GPT-2's byte alphabet
    unicode_regex.py  the split regexes' \\p{L}-style classes, spelled out for Python's re
    chat.py           chat templates recognized and rendered without Jinja (harmony, ChatML, ...)

`minimoe.load_tokenizer(path)` is the entry point. See docs/tokenizers.md.
"""
from minimoe.hf_tokenizer.tokenizer import HFTokenizer

__all__ = ["HFTokenizer"]
