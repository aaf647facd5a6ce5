"""minimoe against Hugging Face transformers' MixtralForCausalLM, on fixtures that
tests/fixtures/make_hf_mixtral.py recorded (random weights, logits computed by transformers)."""
import json
import shutil

import numpy as np
import pytest

import minimoe
from minimoe import CheckpointError
from minimoe.io.safetensors_file import read_tensors

from conftest import FIXTURES

NAMES = ["mha", "gqa", "headdim", "legacy"]


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(name):
    folder = FIXTURES / f"hf_mixtral_{name}"
    model = minimoe.load(folder)
    expected, _ = read_tensors(folder / "expected.safetensors")
    logits = model(expected["tokens"])
    assert logits.dtype == np.float32
    assert np.abs(logits - expected["logits"]).max() < 1e-4


def test_fixtures_cover_gqa_ties_shards_and_dtypes():
    cfgs = {n: minimoe.load(FIXTURES / f"hf_mixtral_{n}").config for n in NAMES}
    assert cfgs["gqa"].n_kv_heads < cfgs["gqa"].n_heads and cfgs["gqa"].tie_embeddings
    assert cfgs["headdim"].head_dim * cfgs["headdim"].n_heads != cfgs["headdim"].d_model
    assert (FIXTURES / "hf_mixtral_gqa" / "model.safetensors.index.json").exists()


def test_kv_cache_on_a_real_checkpoint():
    model = minimoe.load(FIXTURES / "hf_mixtral_gqa")
    tokens = read_tensors(FIXTURES / "hf_mixtral_gqa" / "expected.safetensors")[0]["tokens"][0]
    out = model.generate(tokens[:4], len(tokens) - 4, temperature=0.0)
    seq = list(tokens[:4])
    for _ in range(len(tokens) - 4):
        seq.append(int(model(np.array(seq))[-1].argmax()))
    assert list(out) == seq


def test_missing_shard_and_missing_expert(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(FIXTURES / "hf_mixtral_gqa", folder)
    (folder / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="lists shard model-00002-of-00003.safetensors, which is missing"):
        minimoe.load(folder)
    folder = tmp_path / "legacy"
    shutil.copytree(FIXTURES / "hf_mixtral_legacy", folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    # move one expert's tensor out of the weight map and its file: a checkpoint missing an expert
    from safetensors.numpy import save_file
    victim = "model.layers.1.block_sparse_moe.experts.3.w2.weight"
    fn = index["weight_map"].pop(victim)
    tensors, _ = read_tensors(folder / fn)           # bf16 comes back as float32
    tensors.pop(victim)
    save_file(tensors, folder / fn)
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"missing tensor '{victim}'"):
        minimoe.load(folder)
