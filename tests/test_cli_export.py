"""`minimoe export --to hf|gguf`: a checkpoint in, an exported model out that loads back the same."""
import numpy as np
import pytest

import minimoe
from minimoe.cli import main


def checkpoint(tmp_path):
    model = minimoe.Model(minimoe.Config.preset("tiny-moe"), seed=0, tokenizer=minimoe.ByteTokenizer())
    model.save(tmp_path / "ckpt")
    return model, str(tmp_path / "ckpt")


def test_export_to_hf(tmp_path, capsys):
    model, ckpt = checkpoint(tmp_path)
    assert main(["export", "--to", "hf", "--model", ckpt, "--out", str(tmp_path / "hf")]) == 0
    assert "model_type mixtral" in capsys.readouterr().out
    tokens = np.array([[1, 2, 3, 4]])
    np.testing.assert_array_equal(minimoe.load(tmp_path / "hf")(tokens), model(tokens))


def test_export_to_gguf(tmp_path, capsys):
    pytest.importorskip("gguf")
    model, ckpt = checkpoint(tmp_path)
    out = str(tmp_path / "m.gguf")
    assert main(["export", "--to", "gguf", "--model", ckpt, "--out", out, "--recipe", "q8_0"]) == 0
    assert "recipe q8_0" in capsys.readouterr().out
    assert minimoe.load(out).params["layers.0.moe.experts.up"].fmt == "q8_0"
