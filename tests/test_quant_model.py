"""Quantized models: QTensor indexing, recipes, minimoe.quantize, the error table, and packed
checkpoints (identical logits after save/load, file size as the bits per weight predict).

The oracle for a quantized model is a float model holding the dequantized weights: the packed
model must give the same logits (up to float32 summation order), whatever matmul path runs.

Shape legend: E experts, F expert width, C d_model, V vocab.
"""
import json
import os

import numpy as np
import pytest

import minimoe
from minimoe import quant
from minimoe.io.safetensors_file import read_header
from minimoe.nn import moe
from minimoe.quant import QTensor, QuantError
from minimoe.quant.model import (FLOAT, RECIPES, error_rows, format_error_table, get_recipe,
                                 plan_quantization, predicted_bytes, totals)

# Every matrix's last dim is a multiple of 64, so every format (nf4 included) packs everything.
SMALL = dict(vocab_size=65, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
             n_experts=4, top_k=2, d_expert=64, dense_layers=[0], max_seq_len=32, tie_embeddings=False)


@pytest.fixture(scope="module")
def model():
    return minimoe.Model(minimoe.Config(**SMALL), seed=1)


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, 65, size=(2, 12))


def dequantized_twin(qmodel):
    """The oracle: a float model holding exactly the values the packed weights decode to."""
    params = {k: v.dequantize() if isinstance(v, QTensor) else v for k, v in qmodel.params.items()}
    return minimoe.Model(qmodel.config, params=params)


# --- QTensor.__getitem__ ---------------------------------------------------------------------------

def test_indexing_an_expert_stack_gives_a_view():
    w = np.random.default_rng(0).standard_normal((4, 8, 64)).astype(np.float32)   # (E, F, C)
    qt = quant.quantize(w, "q4_0", name="experts.gate")
    e2 = qt[2]
    assert isinstance(e2, QTensor) and e2.fmt == "q4_0" and e2.shape == (8, 64)
    assert e2.blocks.shape == (8, 2 * 18) and np.shares_memory(e2.blocks, qt.blocks)
    assert e2.name == "experts.gate[2]"
    np.testing.assert_array_equal(e2.dequantize(), qt.dequantize()[2])
    np.testing.assert_array_equal(qt[-1].blocks, qt.blocks[3])
    np.testing.assert_array_equal(qt[1, 5].dequantize(), qt.dequantize()[1, 5])        # (C,)
    np.testing.assert_array_equal(qt[np.int64(3)].blocks, qt.blocks[3])
    assert [q.shape for q in qt] == [(8, 64)] * 4                                        # iteration


def test_indexing_writes_through_to_the_stack():
    qt = quant.quantize(np.ones((2, 2, 32), np.float32), "q8_0")
    qt[1].blocks[...] = 0                    # a view: zeroing expert 1's bytes zeroes them in the stack
    assert (qt.blocks[1] == 0).all() and (qt.blocks[0] != 0).any()


@pytest.mark.parametrize("index, error, match", [
    (slice(0, 2), QuantError, "only integer indices"),
    ((0, slice(None)), QuantError, "only integer indices"),
    (True, QuantError, "only integer indices"),
    ((0, 1, 2), QuantError, "last axis, which is packed in blocks of 32"),
    (4, IndexError, "index 4 is out of range for axis 0 of size 4"),
    ((0, -9), IndexError, "axis 1 of size 8"),
])
def test_indexing_errors(index, error, match):
    qt = quant.quantize(np.zeros((4, 8, 32), np.float32), "mxfp4", name="w")
    with pytest.raises(error, match=match) as info:
        qt[index]
    assert "'w'" in str(info.value)


def test_moe_expert_loop_equals_dispatch_with_packed_experts(model):
    qmodel = minimoe.quantize(model, "q4_0")
    p = qmodel.layer_params(1)["moe"]
    assert isinstance(p["experts.gate"], QTensor)
    x = np.random.default_rng(3).standard_normal((2, 5, 64)).astype(np.float32)
    y_loop, _ = moe.forward_loop(x, p, qmodel.config)
    y, _, _ = moe.forward(x, p, qmodel.config)
    np.testing.assert_allclose(y, y_loop, rtol=1e-5, atol=1e-6)


# --- recipes and plans -------------------------------------------------------------------------------

def test_registry_has_the_issue_recipes_each_described():
    for name in ("fp32", "q8_0", "q4_0", "q4_1", "mxfp4", "nf4", "mxfp4-moe", "q4_0-moe"):
        assert name in RECIPES and RECIPES[name].description
    assert get_recipe("MXFP4-MOE") is RECIPES["mxfp4-moe"]


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(QuantError) as info:
        get_recipe("q3_k")
    msg = str(info.value)
    assert "unknown recipe 'q3_k'" in msg
    for name, r in RECIPES.items():
        assert name in msg and r.description in msg


@pytest.mark.parametrize("recipe", ["q8_0", "q4_0", "q4_1", "mxfp4", "nf4"])
def test_uniform_plan(model, recipe):
    plan = plan_quantization(model.config, recipe)
    for name, e in plan.items():
        if e.component in ("attention", "ffn", "experts", "shared_experts") and len(e.shape) > 1:
            assert e.fmt == recipe, name
        elif e.component == "head":
            assert e.fmt == "q8_0"                  # llama.cpp keeps the output matrix at >= 6 bits
        else:
            assert e.fmt == FLOAT, name             # norms, router, embedding


def test_mixed_plan(model):
    plan = plan_quantization(model.config, "mxfp4-moe")
    assert plan["layers.1.moe.experts.down"].fmt == "mxfp4"
    assert plan["layers.1.attn.q.weight"].fmt == "q8_0"
    assert plan["layers.0.ffn.down.weight"].fmt == "q8_0"           # the dense layer
    assert plan["layers.1.moe.router.weight"].fmt == FLOAT
    assert plan["head.weight"].fmt == "q8_0" and plan["embed.weight"].fmt == FLOAT
    assert plan_quantization(model.config, "q4_0-moe")["layers.1.moe.experts.up"].fmt == "q4_0"


def test_vectors_gates_and_tied_heads_stay_float():
    cfg = minimoe.Config(**{**SMALL, "qkv_bias": True, "expert_bias": True, "n_shared_experts": 1,
                            "shared_expert_gate": True, "attn_sinks": True, "tie_embeddings": True})
    plan = plan_quantization(cfg, "q4_0")
    for name in ("layers.1.attn.q.bias", "layers.1.attn.sinks", "layers.1.moe.experts.gate_bias",
                 "layers.1.moe.shared_gate.weight", "embed.weight"):
        assert plan[name].fmt == FLOAT, name
    assert plan["layers.1.moe.shared.up.weight"].fmt == "q4_0"
    assert "gate" in plan["layers.1.moe.shared_gate.weight"].note
    assert "tied" in plan["embed.weight"].note and "head.weight" not in plan


def test_rows_that_do_not_split_into_blocks_stay_float_with_a_note_or_fail_strictly():
    cfg = minimoe.Config.preset("shakespeare-moe")                   # d_expert 172, not a multiple of 32
    plan = plan_quantization(cfg, "q4_0")
    down = plan["layers.0.moe.experts.down"]
    assert down.fmt == FLOAT and "172 is not a multiple of 32" in down.note
    assert plan["layers.0.moe.experts.up"].fmt == "q4_0"              # (E, 172, 128): 128 splits
    with pytest.raises(QuantError, match=r"layers.0.moe.experts.down.*\(8, 128, 172\).*blocks of 32"):
        plan_quantization(cfg, "q4_0", strict=True)


def test_dict_recipes(model):
    plan = plan_quantization(model.config, {"experts": "nf4", "attention": "Q8_0", "head": None})
    assert plan["layers.1.moe.experts.gate"].fmt == "nf4"
    assert plan["layers.0.attn.v.weight"].fmt == "q8_0"
    assert plan["layers.0.ffn.up.weight"].fmt == FLOAT and plan["head.weight"].fmt == FLOAT
    assert plan_quantization(model.config, {"router": "q8_0"})["layers.1.moe.router.weight"].fmt == "q8_0"
    for bad, match in [({"experts": "q8_k"}, "unknown quant format"), ({"mlp": "q4_0"}, "unknown component"),
                       ({"norms": "q8_0"}, "norms are vectors"), ({"embedding": "q8_0"}, "embedding rows"),
                       (4, "a recipe is a name or a dict")]:
        with pytest.raises(QuantError, match=match):
            get_recipe(bad)


# --- quantizing a model ----------------------------------------------------------------------------

@pytest.mark.parametrize("recipe", list(RECIPES))
def test_quantized_model_matches_its_dequantized_twin(model, tokens, recipe):
    before = {k: v.copy() for k, v in model.params.items()}
    qmodel = minimoe.quantize(model, recipe)
    assert qmodel is not model and qmodel.params is not model.params
    for k, v in model.params.items():                                 # the input is untouched
        assert type(v) is np.ndarray and np.array_equal(v, before[k]), k
    plan = plan_quantization(model.config, recipe)
    for k, v in qmodel.params.items():
        assert (v.fmt if isinstance(v, QTensor) else FLOAT) == plan[k].fmt, k
        assert v is not model.params[k]
    logits = qmodel(tokens)                                           # (B, T, V)
    np.testing.assert_allclose(logits, dequantized_twin(qmodel)(tokens), rtol=1e-5, atol=1e-5)
    if recipe == FLOAT:
        np.testing.assert_array_equal(logits, model(tokens))


def test_quantized_model_generates_like_its_twin(model):
    qmodel = minimoe.quantize(model, "mxfp4-moe")
    prompt = np.array([3, 1, 4, 1, 5])
    out = qmodel.generate(prompt, max_new_tokens=8)
    np.testing.assert_array_equal(out, dequantized_twin(qmodel).generate(prompt, max_new_tokens=8))
    assert out.shape == (13,)


def test_error_grows_as_bits_shrink(model, tokens):
    ref = model(tokens)
    drift = {r: float(np.abs(minimoe.quantize(model, r)(tokens) - ref).max()) for r in ("q8_0", "q4_0")}
    assert 0 < drift["q8_0"] < drift["q4_0"]


def test_already_quantized_is_refused(model):
    with pytest.raises(QuantError, match=r"already quantized \(tensor '.*' \(q4_0\)\)"):
        minimoe.quantize(minimoe.quantize(model, "q4_0"), "q8_0")


def test_error_rows_against_a_direct_computation(model):
    qmodel = minimoe.quantize(model, "q4_1")
    rows = {r["name"]: r for r in error_rows(model, qmodel, "q4_1")}
    name = "layers.1.moe.experts.down"
    w = model.params[name].astype(np.float64)
    err = qmodel.params[name].dequantize() - w
    r = rows[name]
    assert r["fmt"] == "q4_1" and r["shape"] == (4, 64, 64)
    assert r["rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)), rel=1e-12)
    assert r["max_abs"] == pytest.approx(np.abs(err).max(), rel=1e-12)
    assert r["bytes_before"] == w.size * 4 and r["bytes_after"] == w.size // 32 * 20
    assert rows["norm.weight"]["rmse"] == 0 and rows["norm.weight"]["fmt"] == FLOAT
    t = totals(list(rows.values()))
    assert t["bytes_after"] == sum(v.nbytes for v in qmodel.params.values()) == predicted_bytes(model.config, "q4_1")
    text = format_error_table(list(rows.values()), title="recipe q4_1")
    assert text.startswith("recipe q4_1") and name in text and "bits per weight overall" in text


def test_error_table_footnotes_each_reason_once():
    m = minimoe.Model(minimoe.Config.preset("shakespeare-moe"), seed=0)
    text = format_error_table(error_rows(m, minimoe.quantize(m, "q4_0"), "q4_0"))
    assert text.count("172 is not a multiple of 32") == 1 and text.count("[2]") == 5   # 4 rows + note
    assert "tied with the head" in text


# --- packed checkpoints ----------------------------------------------------------------------------

@pytest.mark.parametrize("recipe", ["q8_0", "q4_0", "q4_1", "mxfp4", "nf4", "mxfp4-moe"])
def test_save_load_gives_identical_logits(model, tokens, recipe, tmp_path):
    qmodel = minimoe.quantize(model, recipe)
    qmodel.save(tmp_path)
    loaded = minimoe.load(tmp_path)
    for k, v in qmodel.params.items():
        w = loaded.params[k]
        assert type(w) is type(v), k
        if isinstance(v, QTensor):
            assert (w.fmt, w.shape) == (v.fmt, v.shape) and np.array_equal(w.blocks, v.blocks), k
    np.testing.assert_array_equal(loaded(tokens), qmodel(tokens))


def test_packed_tensors_stay_packed_on_disk(model, tmp_path):
    qmodel = minimoe.quantize(model, "mxfp4-moe")
    qmodel.save(tmp_path)
    header, metadata, _ = read_header(tmp_path / "model.safetensors")
    packed = json.loads(metadata["minimoe.quant"])
    for name, v in qmodel.params.items():
        if isinstance(v, QTensor):
            assert header[name]["dtype"] == "U8" and tuple(header[name]["shape"]) == v.blocks.shape
            assert packed[name] == {"fmt": v.fmt, "shape": list(v.shape)}
        else:
            assert header[name]["dtype"] == "F32" and name not in packed


# Big enough that the packed matrices dominate; tied, so every matrix takes the recipe's format.
SIZED = dict(vocab_size=65, d_model=128, n_layers=2, n_heads=4, n_experts=4, top_k=2, d_ff=256,
             d_expert=256, max_seq_len=32, tie_embeddings=True)


@pytest.mark.parametrize("fmt", ["q8_0", "q4_1", "q4_0", "mxfp4", "nf4"])
def test_file_size_is_what_the_bits_per_weight_predict(fmt, tmp_path):
    cfg = minimoe.Config(**SIZED)
    qmodel = minimoe.quantize(minimoe.Model(cfg, seed=0), fmt)
    qmodel.save(tmp_path)
    size = os.path.getsize(tmp_path / "model.safetensors")
    packed = [v for v in qmodel.params.values() if isinstance(v, QTensor)]
    floats = [v for v in qmodel.params.values() if not isinstance(v, QTensor)]
    assert {v.fmt for v in packed} == {fmt}
    n_packed = sum(int(np.prod(v.shape)) for v in packed)
    # prediction from the format alone: packed weights at bits_per_weight, float tensors at 4 bytes
    predicted = n_packed * quant.bits_per_weight(fmt) / 8 + sum(v.nbytes for v in floats)
    assert predicted == predicted_bytes(cfg, fmt)
    header_bytes = 8 + int.from_bytes((tmp_path / "model.safetensors").read_bytes()[:8], "little")
    assert size == header_bytes + predicted                           # exact: nothing else on disk
    assert abs(size - predicted) / predicted < 0.02                   # the header is under 2%
    packed_bits = 8 * sum(v.nbytes for v in packed) / n_packed
    assert packed_bits == quant.bits_per_weight(fmt)
    assert n_packed / sum(int(np.prod(np.shape(v))) for v in floats) > 20   # float tensors are few
