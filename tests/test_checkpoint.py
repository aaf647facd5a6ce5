import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import minimoe
from minimoe import CheckpointError, Config, Model
from minimoe.io.safetensors_file import read_tensors
from minimoe.tokenizer import CharTokenizer


@pytest.fixture
def ckpt(tmp_path):
    m = Model(Config.preset("tiny-moe", vocab_size=40, attn_sinks=True, qkv_bias=True), seed=3,
              tokenizer=CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz .,;:!?'\n-ABCD"))
    m.save(tmp_path / "ckpt")
    return m, tmp_path / "ckpt"


def test_save_load_gives_identical_logits(ckpt):
    m, folder = ckpt
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors", "tokenizer.json"]
    m2 = minimoe.load(folder)
    tokens = np.arange(30) % 40
    np.testing.assert_array_equal(m2(tokens), m(tokens))
    assert m2.config == m.config
    assert m2.tokenizer.decode(m2.tokenizer.encode("hello")) == "hello"


def test_our_reader_agrees_with_the_safetensors_package(ckpt):
    _, folder = ckpt
    ours, meta = read_tensors(folder / "model.safetensors")
    theirs = load_file(folder / "model.safetensors")
    assert ours.keys() == theirs.keys() and meta["format"] == "minimoe"
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k])


def test_bf16_is_widened_exactly(tmp_path):
    x = np.array([1.0, -2.5, 3.140625, 1e-3], dtype=np.float32)
    bits = (x.view(np.uint32) >> 16).astype(np.uint16)          # truncate to bfloat16 by hand
    header = json.dumps({"x": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bits.tobytes())
    got, _ = read_tensors(path)
    np.testing.assert_array_equal(got["x"], (bits.astype(np.uint32) << 16).view(np.float32))
    assert got["x"][0] == 1.0 and got["x"][1] == -2.5


def _rewrite(folder, fn):
    tensors = load_file(folder / "model.safetensors")
    fn(tensors)
    save_file(tensors, folder / "model.safetensors")


def test_missing_tensor(ckpt):
    _, folder = ckpt
    _rewrite(folder, lambda t: t.pop("layers.1.moe.router.weight"))
    with pytest.raises(CheckpointError, match=r"model.safetensors: missing tensor 'layers.1.moe.router.weight'"):
        minimoe.load(folder)


def test_extra_tensor(ckpt):
    _, folder = ckpt
    _rewrite(folder, lambda t: t.__setitem__("layers.0.mystery", np.zeros(3, np.float32)))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'layers.0.mystery'"):
        minimoe.load(folder)


def test_misshapen_tensor(ckpt):
    _, folder = ckpt
    _rewrite(folder, lambda t: t.__setitem__("layers.0.attn.q.weight", np.zeros((32, 31), np.float32)))
    with pytest.raises(CheckpointError, match=r"tensor 'layers.0.attn.q.weight' has shape \(32, 31\), expected \(32, 32\)"):
        minimoe.load(folder)


def test_wrong_dtype(ckpt):
    _, folder = ckpt
    _rewrite(folder, lambda t: t.__setitem__("norm.weight", np.ones(32, np.int32)))
    with pytest.raises(CheckpointError, match=r"tensor 'norm.weight' has dtype int32, expected a float"):
        minimoe.load(folder)


@pytest.mark.parametrize("keep", [4, 100, -200])
def test_truncated_file(ckpt, keep):
    _, folder = ckpt
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep > 0 else data[:keep])
    with pytest.raises(CheckpointError, match=r"model.safetensors: (truncated|corrupt)"):
        minimoe.load(folder)


def test_corrupt_header(ckpt):
    _, folder = ckpt
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:12] = b"\xff\xfe{{"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        minimoe.load(folder)


def test_unknown_model_type_and_missing_files(ckpt, tmp_path):
    _, folder = ckpt
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "llama4"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config.json: unknown model_type 'llama4'"):
        minimoe.load(folder)
    with pytest.raises(CheckpointError, match="no such model folder"):
        minimoe.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        minimoe.load(tmp_path / "empty")


def test_bad_config_in_checkpoint(ckpt):
    _, folder = ckpt
    cfg = json.loads((folder / "config.json").read_text())
    cfg["top_k"] = 9
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config.json: top_k must be between 1 and n_experts=4"):
        minimoe.load(folder)


def test_save_is_atomic(ckpt, monkeypatch):
    """A crash while writing leaves the previous checkpoint loadable and no temporary files."""
    m, folder = ckpt
    before = (folder / "model.safetensors").read_bytes()
    from minimoe.io import checkpoint

    def crash(path, tensors, metadata=None, codes=None):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(checkpoint, "write_safetensors", crash)
    with pytest.raises(KeyboardInterrupt):
        Model(m.config, seed=99).save(folder)
    assert (folder / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors", "tokenizer.json"]
    minimoe.load(folder)
