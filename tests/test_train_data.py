"""Training data: the embedded corpus, tokenisation and splits, clear errors for bad text, and
the tinyshakespeare download (offline: a file:// URL or a replaced fetch function)."""
import os

import numpy as np
import pytest

from minimoe.cli import main as cli_main
from minimoe.errors import DataError
from minimoe.train import data


def test_embedded_corpus_is_pythons_docs():
    text = data.pydoc_corpus()
    assert len(text) > 100_000 and "assert" in text and "lambda" in text
    ds = data.build_dataset("pydoc", "char", block_size=64)
    assert ds.vocab_size == len(set(text))
    assert len(ds.train) == int(len(text) * 0.9) and len(ds.train) + len(ds.val) == len(text)


def test_char_encoding_matches_the_tokenizer():
    text = "To be, or not to be: that is the question.\nÆsop — ünïcode ☃"
    ds = data.build_dataset("inline", "char", block_size=4, text=text * 3)
    ids = np.concatenate([ds.train, ds.val])
    np.testing.assert_array_equal(ids, ds.tokenizer.encode(text * 3))
    assert ds.tokenizer.decode(ids) == text * 3


def test_byte_tokenizer_split():
    ds = data.build_dataset("inline", "byte", block_size=8, val_fraction=0.25, text="héllo wörld " * 20)
    assert ds.vocab_size == 257
    n = len("héllo wörld ".encode()) * 20
    assert len(ds.train) == int(n * 0.75) and len(ds.val) == n - int(n * 0.75)


def test_batches_are_shifted_windows():
    ds = data.build_dataset("inline", "char", block_size=8, text="abcdefghijklmnopqrstuvwxyz" * 10)
    x, y = ds.batch("train", 5, 8, np.random.default_rng(0))
    assert x.shape == y.shape == (5, 8)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    # each window is contiguous text: the alphabet advances by one
    np.testing.assert_array_equal((y - x) % 26, 1)


def write(tmp_path, name, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def test_empty_file(tmp_path):
    path = write(tmp_path, "empty.txt", b"")
    with pytest.raises(DataError, match=f"{path}: the file is empty"):
        data.build_dataset(path)


def test_binary_file(tmp_path):
    path = write(tmp_path, "blob.bin", bytes(range(256)) * 10)
    with pytest.raises(DataError, match="looks binary"):
        data.build_dataset(path)


def test_not_utf8(tmp_path):
    path = write(tmp_path, "latin1.txt", "café ".encode("latin-1") * 100)
    with pytest.raises(DataError, match=r"not UTF-8 text \(invalid byte 0xe9 at offset 3\)"):
        data.build_dataset(path)


def test_too_short(tmp_path):
    path = write(tmp_path, "short.txt", b"hello world, this is short")
    with pytest.raises(DataError, match=r"too short: 26 tokens give 23 for training and 3 for validation, "
                                        r"but each split needs at least 66"):
        data.build_dataset(path, block_size=64)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.txt: cannot read"):
        data.build_dataset(str(tmp_path / "nope.txt"))


def test_shakespeare_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMOE_CACHE", str(tmp_path))
    with pytest.raises(DataError, match="run `minimoe data shakespeare`"):
        data.load_text("shakespeare")


def test_fetch_verifies_before_writing(tmp_path):
    calls = []

    def bad_fetch(url):
        calls.append(url)
        return b"404: Not Found"

    with pytest.raises(DataError, match="expected tinyshakespeare of 1,115,394 bytes, found 14 bytes"):
        data.fetch_shakespeare(cache=str(tmp_path), fetch=bad_fetch)
    assert calls == [data.SHAKESPEARE_URL]
    assert not os.listdir(tmp_path)                      # nothing written, not even a temp file

    def right_size_wrong_bytes(url):
        return b"x" * data.SHAKESPEARE_BYTES

    with pytest.raises(DataError, match="md5 should be 6fb458f1232090904fb40fe944165e91"):
        data.fetch_shakespeare(cache=str(tmp_path), fetch=right_size_wrong_bytes)


def test_fetch_offline_error(tmp_path):
    import urllib.error

    def offline(url):
        raise urllib.error.URLError("no network")

    with pytest.raises(DataError, match="could not download .*no network.*--from FILE"):
        data.fetch_shakespeare(cache=str(tmp_path), fetch=offline)


def test_fetch_from_file_url_and_cache_reuse(tmp_path, shakespeare_path):
    url = shakespeare_path.resolve().as_uri()            # file:///.../tinyshakespeare.txt
    cache = tmp_path / "cache"
    path = data.fetch_shakespeare(url, cache=str(cache))
    assert path == str(cache / "tinyshakespeare.txt")
    assert os.path.getsize(path) == data.SHAKESPEARE_BYTES

    def must_not_fetch(url):
        raise AssertionError("the verified cached copy should be reused")

    assert data.fetch_shakespeare(cache=str(cache), fetch=must_not_fetch) == path


def test_data_command_with_local_copy(tmp_path, shakespeare_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIMOE_CACHE", str(tmp_path))
    assert cli_main(["data", "shakespeare", "--from", str(shakespeare_path)]) == 0
    assert "tinyshakespeare.txt (1,115,394 bytes" in capsys.readouterr().out
    text, description = data.load_text("shakespeare")
    assert len(text) == 1_115_394 and str(tmp_path) in description
    ds = data.build_dataset("shakespeare")
    assert ds.vocab_size == 65                           # nanoGPT's character vocabulary


def test_data_command_rejects_a_wrong_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIMOE_CACHE", str(tmp_path / "cache"))
    wrong = write(tmp_path, "wrong.txt", b"not shakespeare\n")
    assert cli_main(["data", "shakespeare", "--from", wrong]) == 1
    assert "expected tinyshakespeare of 1,115,394 bytes, found 16 bytes" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "tinyshakespeare.txt").exists()
