"""minimoe -> Hugging Face folder -> minimoe is exact, for each family save_hf writes, and
transformers (when installed) loads the folder with the same logits (within 1e-5, float32).
The transformers checks skip cleanly without torch/transformers; run them with the reference
environment (tests/benchmarks/export_peers.py runs them all)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import minimoe
from minimoe.io import hf_export

TOKENS = np.array([[3, 17, 42, 99, 7, 250, 1, 64, 128, 5, 9, 11, 200, 31, 8, 77]])   # longer than gpt-oss's window
FAMILIES = ["mixtral", "qwen3_moe", "olmoe", "qwen2_moe", "gpt_oss", "deepseek_v3", "deepseek_v2"]


def model_for(family: str, seed: int = 0):
    """A small random model of each export family, with non-trivial norms (random around 1)."""
    cfg = minimoe.Config.preset("tiny-moe")
    if family == "qwen3_moe":
        cfg = dataclasses.replace(cfg, name="tiny-qwen3", qk_norm="head", router_renorm=False,
                                  dense_layers=[0], d_ff=48)
    elif family == "olmoe":
        cfg = dataclasses.replace(cfg, name="tiny-olmoe", qk_norm="full", router_renorm=False)
    elif family == "qwen2_moe":
        cfg = dataclasses.replace(cfg, name="tiny-qwen2", n_shared_experts=1, d_shared_expert=40,
                                  shared_expert_gate=True, qkv_bias=True, router_renorm=False,
                                  dense_layers=[1], d_ff=48)
    elif family == "gpt_oss":
        cfg = minimoe.Config.preset("tiny-gpt-oss")
    elif family == "deepseek_v3":
        cfg = minimoe.Config.preset("tiny-deepseek")
    elif family == "deepseek_v2":
        cfg = dataclasses.replace(minimoe.Config.preset("tiny-deepseek"), name="tiny-deepseek-v2",
                                  router="softmax_topk", router_renorm=False, router_correction_bias=False,
                                  router_scale=1.5, q_lora_rank=0)
    model = minimoe.Model(cfg, seed=seed, tokenizer=minimoe.ByteTokenizer())
    rng = np.random.default_rng(seed + 1)
    for name, w in model.params.items():
        if name.endswith("norm.weight"):
            w[...] = 1 + 0.3 * rng.standard_normal(w.shape).astype(w.dtype)
        elif name.endswith((".bias", "sinks", "correction_bias")):  # biases start at 0: make them count
            w[...] = 0.1 * rng.standard_normal(w.shape).astype(w.dtype)
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_is_exact(tmp_path, family):
    model = model_for(family)
    assert model.save_hf(tmp_path) == family
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == family
    back = minimoe.load(tmp_path)
    assert set(back.params) == set(model.params)
    for name, w in model.params.items():
        np.testing.assert_array_equal(back.params[name], w, err_msg=name)
    np.testing.assert_array_equal(back(TOKENS), model(TOKENS))
    text = "héllo, world"
    np.testing.assert_array_equal(back.tokenizer.encode(text), model.tokenizer.encode(text))
    assert back.tokenizer.decode(model.tokenizer.encode(text)) == text


def test_char_tokenizer_goes_with_it(tmp_path):
    model = model_for("mixtral")
    model.tokenizer = minimoe.CharTokenizer("abc de")
    model.save_hf(tmp_path)
    back = minimoe.load(tmp_path)
    np.testing.assert_array_equal(back.tokenizer.encode("bad cab"), model.tokenizer.encode("bad cab"))
    assert back.tokenizer.decode([0, 1, 2]) == "abc"


def test_refuses_what_no_family_expresses(tmp_path):
    cfg = dataclasses.replace(minimoe.Config.preset("tiny-moe"), router_bias=True)
    with pytest.raises(hf_export.ExportError, match="router_bias"):
        minimoe.Model(cfg, seed=0).save_hf(tmp_path)
    with pytest.raises(hf_export.ExportError, match="dense"):
        minimoe.Model(minimoe.Config.preset("tiny"), seed=0).save_hf(tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_loads_the_same_logits(tmp_path, family):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = model_for(family)
    model.save_hf(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.from_numpy(TOKENS)).logits.numpy()
    ours = model(TOKENS)
    assert np.abs(theirs - ours).max() < 1e-5, np.abs(theirs - ours).max()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "héllo, world"
    assert tok(text)["input_ids"] == model.tokenizer.encode(text).tolist()
