import numpy as np
import pytest

from minimoe.tokenizer import ByteTokenizer, CharTokenizer, TokenizerError, tokenizer_from_dict


def test_byte_round_trip_including_unicode_and_specials():
    tok = ByteTokenizer()
    text = "héllo → 世界"
    ids = tok.encode(text)
    assert ids.max() < 256 and len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.decode(np.append(ids, 256)) == text + "<|endoftext|>"
    assert tok.vocab_size == 257


def test_char_tokenizer_is_sorted_and_round_trips():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == sorted(set("hello world")) and tok.vocab_size == 8
    assert list(tok.encode("hello")) == [3, 2, 4, 4, 5]
    assert tok.decode(tok.encode("world hello")) == "world hello"
    again = tokenizer_from_dict(__import__("json").loads(tok.to_json()))
    assert again.chars == tok.chars


def test_char_tokenizer_errors():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(TokenizerError, match="character 'z' is not in this character-level vocabulary"):
        tok.encode("abz")
    with pytest.raises(TokenizerError, match="empty"):
        CharTokenizer.from_text("")
    with pytest.raises(TokenizerError, match="unknown tokenizer kind 'bpe'"):
        tokenizer_from_dict({"kind": "bpe"})
