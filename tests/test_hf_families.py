"""minimoe against Hugging Face transformers for the MoE families beyond Mixtral: OLMoE,
Qwen2-MoE, Qwen3-MoE, gpt-oss (float and MXFP4) and DeepSeek-V2/V3. The fixtures are tiny random
checkpoints that tests/fixtures/make_hf_<family>.py wrote with transformers, with the logits
transformers computed for them (see tests/fixtures/hf_fixture_lib.py); no torch is needed here."""
import json
import shutil

import numpy as np
import pytest

import minimoe
from minimoe import CheckpointError
from minimoe.io.safetensors_file import read_header, read_tensors

from conftest import FIXTURES

FAMILIES = {
    "olmoe": ["olmoe_gqa", "olmoe_bf16"],
    "qwen2_moe": ["qwen2_moe_sparse_step", "qwen2_moe_bf16_window"],
    "qwen3_moe": ["qwen3_moe_headdim", "qwen3_moe_bf16"],
    "gpt_oss": ["gpt_oss_window", "gpt_oss_bf16_clamp", "gpt_oss_mxfp4"],
    "deepseek_v3": ["deepseek_v3_groups", "deepseek_v3_bf16"],
    "deepseek_v2": ["deepseek_v2_lite", "deepseek_v2_bf16_groups"],
}
HUB_NAMED = ["olmoe", "qwen2_moe", "qwen3_moe", "deepseek_v3", "deepseek_v2"]     # families whose Hub checkpoints name each expert
ALL = [(family, name) for family, names in FAMILIES.items() for name in names]
TOL = 1e-4


def load_fixture(name):
    folder = FIXTURES / f"hf_{name}"
    expected, _ = read_tensors(folder / "expected.safetensors")
    return minimoe.load(folder), expected["tokens"], expected["logits"]


@pytest.mark.parametrize("family,name", ALL)
def test_logits_match_transformers(family, name):
    model, tokens, expected = load_fixture(name)
    assert json.loads((FIXTURES / f"hf_{name}" / "config.json").read_text())["model_type"] == family
    logits = model(tokens)
    assert logits.dtype == np.float32
    assert np.abs(logits - expected).max() < TOL


@pytest.mark.parametrize("family,name", ALL)
def test_kv_cache_decoding_equals_the_full_forward(family, name):
    """Prefill 3 positions, then decode the rest one at a time: the same logits as one pass."""
    model, tokens, expected = load_fixture(name)
    full = model(tokens)
    kv = model.new_kv_cache(tokens.shape[0], tokens.shape[1])
    steps = [model.forward(tokens[:, :3], kv)[0]]
    steps += [model.forward(tokens[:, t:t + 1], kv)[0] for t in range(3, tokens.shape[1])]
    decoded = np.concatenate(steps, axis=1)
    assert np.abs(decoded - full).max() < 1e-5
    assert np.abs(decoded - expected).max() < TOL


def _is_sharded(name):
    return (FIXTURES / f"hf_{name}" / "model.safetensors.index.json").exists()


def _dtypes(name):
    folder = FIXTURES / f"hf_{name}"
    return {info["dtype"] for f in folder.glob("model*.safetensors") for info in read_header(f)[0].values()}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_has_a_bf16_sharded_fixture_and_both_namings(family):
    names = FAMILIES[family]
    assert len(names) >= 2
    assert any(_is_sharded(n) and "BF16" in _dtypes(n) for n in names)
    if family in HUB_NAMED:
        hub = [n for n in names if any(".experts.0." in k for k in _all_names(n))]
        assert hub and len(hub) < len(names), "one Hub-named (per-expert) fixture and one fused"


def _all_names(name):
    folder = FIXTURES / f"hf_{name}"
    return [k for f in folder.glob("model*.safetensors") for k in read_header(f)[0]]


def test_the_fixtures_cover_the_options():
    cfg = {name: minimoe.load(FIXTURES / f"hf_{name}").config for _, name in ALL}
    # OLMoE: full-width q/k norm, without and with renormalisation
    assert cfg["olmoe_gqa"].qk_norm == "full" and not cfg["olmoe_gqa"].router_renorm
    assert cfg["olmoe_bf16"].router_renorm and cfg["olmoe_bf16"].qkv_bias and cfg["olmoe_bf16"].tie_embeddings
    # Qwen2-MoE: gated shared expert, qkv (not o) biases, decoder_sparse_step and mlp_only_layers,
    # a sliding window shorter than the sequence on one layer only
    q2 = cfg["qwen2_moe_sparse_step"]
    assert q2.shared_expert_gate and q2.n_shared_experts == 1 and q2.qkv_bias and not q2.o_bias
    assert q2.dense_layers == [0, 2] and cfg["qwen2_moe_bf16_window"].dense_layers == [0]
    w = cfg["qwen2_moe_bf16_window"]
    _, tokens, _ = load_fixture("qwen2_moe_bf16_window")
    assert w.sliding_layers == [0] and 0 < w.sliding_window < tokens.shape[1]
    # Qwen3-MoE: per-head q/k norm, explicit head_dim, norm_topk_prob both ways
    q3 = cfg["qwen3_moe_headdim"]
    assert q3.qk_norm == "head" and q3.head_dim * q3.n_heads != q3.d_model and q3.router_renorm
    assert not cfg["qwen3_moe_bf16"].router_renorm and cfg["qwen3_moe_bf16"].dense_layers == [1]
    # gpt-oss: biases everywhere, sinks, alternating sliding layers shorter than the sequence, YaRN,
    # the clamped SwiGLU (tests/fixtures/make_hf_gpt_oss.py checks its clamps act)
    g = cfg["gpt_oss_window"]
    assert g.attn_sinks and g.qkv_bias and g.o_bias and g.router_bias and g.expert_bias
    assert g.router == "topk_softmax" and g.ffn_act == "swiglu_oai"
    assert g.sliding_layers == [0, 2] and g.rope_scaling["type"] == "yarn"
    assert cfg["gpt_oss_bf16_clamp"].sliding_layers == [1] and cfg["gpt_oss_bf16_clamp"].swiglu_limit == 1.5
    for name in FAMILIES["gpt_oss"]:
        assert 0 < cfg[name].sliding_window < load_fixture(name)[1].shape[1]
    # DeepSeek-V3: latent attention with and without a low-rank q, interleaved or not, YaRN with
    # mscale != mscale_all_dim; group-limited sigmoid routing with a nonzero correction bias
    # (make_hf_deepseek_v3.py checks it changes some token's experts), renormalised or not
    d3 = cfg["deepseek_v3_groups"]
    assert d3.attention == "mla" and d3.q_lora_rank and d3.rope_interleave
    assert d3.v_head_dim != d3.qk_nope_head_dim + d3.qk_rope_head_dim
    assert d3.rope_scaling["mscale"] != d3.rope_scaling["mscale_all_dim"] and d3.norm_eps != 1e-6
    assert (d3.router, d3.router_groups, d3.router_topk_groups, d3.router_correction_bias) == ("sigmoid_topk", 4, 2, True)
    assert d3.router_renorm and d3.router_scale == 2.5 and d3.dense_layers == [0] and d3.n_shared_experts == 1
    bias = minimoe.load(FIXTURES / "hf_deepseek_v3_groups").params["layers.1.moe.router.e_score_correction_bias"]
    assert np.abs(bias).min() > 0
    d3b = cfg["deepseek_v3_bf16"]
    assert not d3b.q_lora_rank and not d3b.rope_interleave and not d3b.router_renorm and d3b.n_shared_experts == 2
    # DeepSeek-V2: softmax routing, greedy and group-limited, x16
    d2 = cfg["deepseek_v2_lite"]
    assert d2.router == "softmax_topk" and not d2.router_renorm and not d2.q_lora_rank and d2.rope_interleave
    assert cfg["deepseek_v2_bf16_groups"].router_groups == 4 and cfg["deepseek_v2_bf16_groups"].router_scale == 16
    # across the fixtures: fp32, bf16 and fp16 files; GQA ratios other than 1, top-k other than 2
    assert set().union(*(_dtypes(name) for _, name in ALL)) >= {"F32", "BF16", "F16", "U8"}
    assert {c.n_heads // c.n_kv_heads for c in cfg.values()} >= {1, 2, 3, 4}
    assert {c.top_k for c in cfg.values()} >= {2, 3, 4}


@pytest.mark.parametrize("family,field,value,message", [
    ("olmoe", "clip_qkv", 8.0, "olmoe: clip_qkv=8.0 is not supported"),
    ("qwen2_moe", "quantization_config", {"quant_method": "gptq"},
     "qwen2_moe: quantization_config.quant_method='gptq' is not supported"),
    ("deepseek_v3", "quantization_config", {"quant_method": "fp8", "fmt": "e4m3"},
     "deepseek_v3: quantization_config.quant_method='fp8' is not supported"),
    ("deepseek_v3", "scoring_func", "softmax", "deepseek_v3: scoring_func='softmax' is not supported"),
    ("deepseek_v3", "num_key_value_heads", 2, "deepseek_v3: num_key_value_heads=2 is not supported"),
    ("deepseek_v3", "attention_bias", True, "deepseek_v3: attention_bias=True is not supported"),
    ("deepseek_v2", "topk_method", "noaux_tc", "deepseek_v2: topk_method='noaux_tc' is not supported"),
    ("deepseek_v2", "norm_topk_prob", True, "deepseek_v2: norm_topk_prob=True is not supported"),
    ("gpt_oss", "quantization_config", {"quant_method": "bitsandbytes"},
     "gpt_oss: quantization_config.quant_method='bitsandbytes' is not supported"),
])
def test_unsupported_options_name_the_family_and_the_option(tmp_path, family, field, value, message):
    name = FAMILIES[family][0]
    folder = tmp_path / name
    shutil.copytree(FIXTURES / f"hf_{name}", folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg[field] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=message):
        minimoe.load(folder)


def test_a_hub_checkpoint_missing_one_expert(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(FIXTURES / "hf_olmoe_gqa", folder)
    from safetensors.numpy import save_file
    tensors, _ = read_tensors(folder / "model.safetensors")
    victim = "model.layers.1.mlp.experts.5.down_proj.weight"
    tensors.pop(victim)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"missing tensor '{victim}'"):
        minimoe.load(folder)


# --- gpt-oss MXFP4 -------------------------------------------------------------------------------
def test_mxfp4_experts_load_packed_with_the_files_bytes():
    """Each expert stack is an mxfp4 QTensor whose codes and scales are the file's, bit for bit:
    to_hf_mxfp4 (the inverse of the nibble reordering) gives back the stored bytes, so nothing
    was decoded to float or re-quantized."""
    from minimoe.quant import QTensor
    from minimoe.quant.mxfp4 import to_hf_mxfp4
    folder = FIXTURES / "hf_gpt_oss_mxfp4"
    model = minimoe.load(folder)
    stored = {}
    for f in folder.glob("model-*.safetensors"):
        stored.update(read_tensors(f)[0])
    for i in range(model.config.n_layers):
        hf, p = f"model.layers.{i}.mlp.experts.", f"layers.{i}.moe.experts."
        blocks, scales = stored[hf + "gate_up_proj_blocks"], stored[hf + "gate_up_proj_scales"]
        assert blocks.dtype == np.uint8
        for ours, rows in (("gate", slice(0, None, 2)), ("up", slice(1, None, 2))):
            qt = model.params[p + ours]
            assert isinstance(qt, QTensor) and qt.fmt == "mxfp4"
            b, s = to_hf_mxfp4(qt)
            assert np.array_equal(b, blocks[:, rows]) and np.array_equal(s, scales[:, rows])
        b, s = to_hf_mxfp4(model.params[p + "down"])
        assert np.array_equal(b, stored[hf + "down_proj_blocks"]) and np.array_equal(s, stored[hf + "down_proj_scales"])
        assert model.params[p + "gate_bias"].dtype == np.float32   # biases stay float


def test_mxfp4_experts_run_through_the_fused_kernels(monkeypatch):
    from minimoe.kernels import qmatmul as qm
    calls = []
    real = qm.qmatmul
    monkeypatch.setattr(qm, "qmatmul", lambda x, w, *a: calls.append(w.fmt) or real(x, w, *a))
    model, tokens, expected = load_fixture("gpt_oss_mxfp4")
    with minimoe.backend("numba"):                        # (MINIMOE_BACKEND=numpy runs the reference)
        assert np.abs(model(tokens) - expected).max() < TOL
    assert calls and set(calls) == {"mxfp4"}
    with minimoe.backend("numpy"):                        # the reference: dequantize, then multiply
        assert np.abs(model(tokens) - expected).max() < TOL


def test_deepseek_v3_multi_token_prediction_layers_are_skipped(tmp_path):
    """Released V3 checkpoints append num_nextn_predict_layers extra layers that transformers does not
    build; minimoe skips them too."""
    from safetensors.numpy import save_file
    folder = tmp_path / "v3"
    shutil.copytree(FIXTURES / "hf_deepseek_v3_groups", folder)
    tensors, _ = read_tensors(folder / "model.safetensors")
    n = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    tensors[f"model.layers.{n}.eh_proj.weight"] = np.ones((4, 4), np.float32)
    tensors[f"model.layers.{n}.input_layernorm.weight"] = np.ones(4, np.float32)
    save_file(tensors, folder / "model.safetensors")
    model = minimoe.load(folder)
    expected, _ = read_tensors(folder / "expected.safetensors")
    assert np.abs(model(expected["tokens"]) - expected["logits"]).max() < TOL


@pytest.mark.parametrize("family", list(FAMILIES))
def test_info_and_estimate_read_every_family(family, capsys):
    from minimoe.cli import main as cli_main
    folder = str(FIXTURES / f"hf_{FAMILIES[family][-1]}")
    model = minimoe.load(folder)
    counts = model.param_counts()
    assert cli_main(["info", "--model", folder]) == 0
    out = capsys.readouterr().out
    assert f"{counts['total']:,}" in out and "bytes on disk by dtype" in out
    if family == "gpt_oss":                               # the MXFP4 fixture: experts stay packed
        assert "packed mxfp4" in out and "U8" in out
    assert cli_main(["estimate", folder]) == 0
    out = capsys.readouterr().out
    assert out.startswith(family) and f"{counts['total']:,}" in out
    assert "bytes in the folder's safetensors files" in out
