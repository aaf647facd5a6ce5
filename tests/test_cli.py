import subprocess
import sys

import pytest

from minimoe.cli import main

from conftest import FIXTURES


def test_info_on_a_preset(capsys):
    assert main(["info", "--preset", "shakespeare-moe"]) == 0
    out = capsys.readouterr().out
    assert "active per token" in out and "experts" in out and "float32" in out
    assert "vocab_size           65" in out and "2,389,248" in out   # the preset as defined


def test_info_on_mixtral_mini_keeps_its_vocabulary(capsys):
    assert main(["info", "--preset", "mixtral-mini"]) == 0
    out = capsys.readouterr().out
    assert "vocab_size           8192" in out and "152,084,992" in out


def test_info_on_a_hf_checkpoint_shows_disk_dtypes(capsys):
    assert main(["info", "--model", str(FIXTURES / "hf_mixtral_gqa")]) == 0
    out = capsys.readouterr().out
    assert "bytes on disk by dtype" in out and "BF16" in out


def test_generate_is_deterministic_with_a_seed(capsys):
    args = ["generate", "--preset", "tiny-moe", "--prompt", "Hi", "--max-new-tokens", "5", "--seed", "3"]
    assert main(args) == 0
    a = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == a and a.startswith("Hi")


def test_generate_with_token_ids(capsys):
    assert main(["generate", "--model", str(FIXTURES / "hf_mixtral_mha"), "--prompt-ids", "1,2,3",
                 "--max-new-tokens", "4", "--temperature", "0"]) == 0
    ids = capsys.readouterr().out.strip().split(",")
    assert ids[:3] == ["1", "2", "3"] and len(ids) == 7


@pytest.mark.parametrize("argv, words", [
    (["info"], "give --model DIR"),
    (["info", "--model", "/no/such/dir"], "/no/such/dir: no such model folder"),
    (["info", "--preset", "nope"], "unknown preset 'nope'"),
    (["generate", "--model", str(FIXTURES / "hf_mixtral_mha"), "--prompt", "x"], "no tokenizer.json"),
])
def test_errors_are_one_clear_line(argv, words, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_console_script_entry_point():
    r = subprocess.run([sys.executable, "-m", "minimoe.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "generate" in r.stdout
