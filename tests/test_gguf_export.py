"""minimoe -> GGUF -> minimoe is exact: float tensors bit for bit, packed tensors the same bytes as
minimoe.quant (which are gguf.quants' bytes), the q/k RoPE row permutation undone, and the loaded
model's logits equal. Needs the `gguf` package (test extra)."""
from __future__ import annotations

import dataclasses
import numpy as np
import pytest

import minimoe
from minimoe import quant
from minimoe.io import gguf_file

gguf = pytest.importorskip("gguf")


def tiny_moe(vocab_size=64):
    cfg = minimoe.Config(name="tiny-moe", vocab_size=vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                         n_experts=4, top_k=2, d_ff=64, max_seq_len=32)
    return minimoe.Model(cfg, seed=0)


@pytest.mark.parametrize("recipe", ["f32", "q8_0", "q4_0", "mxfp4"])
def test_round_trip_is_exact(tmp_path, recipe):
    model = tiny_moe()
    back = minimoe.load(model.save_gguf(str(tmp_path / f"m-{recipe}.gguf"), recipe=recipe))
    assert back.config.n_experts == 4 and back.config.top_k == 2 and back.config.n_kv_heads == 2
    for name, ours in model.params.items():
        theirs = back.params[name]
        if isinstance(theirs, np.ndarray):
            np.testing.assert_array_equal(theirs, ours, err_msg=name)
        else:
            assert recipe != "f32" and theirs.fmt == recipe
            np.testing.assert_array_equal(theirs.blocks, quant.quantize(ours, recipe).blocks, err_msg=name)
    if recipe == "f32":
        tokens = np.array([[1, 5, 9, 33, 2]])
        np.testing.assert_array_equal(back(tokens), model(tokens))


def test_file_holds_llama_cpp_names_and_the_rope_permutation(tmp_path):
    model = tiny_moe()
    reader = gguf.GGUFReader(model.save_gguf(str(tmp_path / "m.gguf")))
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["llama.expert_count"].contents() == 4
    assert reader.fields["llama.expert_used_count"].contents() == 2
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    assert tensors["blk.1.ffn_gate_exps.weight"].shape == model.params["layers.1.moe.experts.gate"].shape
    q = model.params["layers.0.attn.q.weight"]                    # (H*D, C), D = 16
    stored = tensors["blk.0.attn_q.weight"]
    np.testing.assert_array_equal(stored[0], q[0])               # row 0 stays
    np.testing.assert_array_equal(stored[1], q[8])               # row D/2 becomes row 1: pairs
    np.testing.assert_array_equal(stored[2], q[1])


@pytest.mark.parametrize("family, arch", [("qwen3_moe", "qwen3moe"), ("olmoe", "olmoe")])
@pytest.mark.parametrize("recipe", ["f32", "q8_0"])
def test_qwen3moe_and_olmoe_round_trip(tmp_path, family, arch, recipe):
    import dataclasses
    cfg = tiny_moe().config
    if family == "qwen3_moe":
        cfg = dataclasses.replace(cfg, qk_norm="head", d_ff=96)
    else:
        cfg = dataclasses.replace(cfg, qk_norm="full", router_renorm=False, n_kv_heads=4)
    model = minimoe.Model(cfg, seed=3)
    path = model.save_gguf(str(tmp_path / f"{arch}.gguf"), recipe=recipe)
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == arch
    back = minimoe.load(path)
    for key in ("qk_norm", "router_renorm", "d_ff", "d_expert", "n_kv_heads", "head_dim"):
        assert getattr(back.config, key) == getattr(cfg, key), key
    for name, ours in model.params.items():
        theirs = back.params[name]
        expect = ours if isinstance(theirs, np.ndarray) else quant.quantize(ours, recipe)
        np.testing.assert_array_equal(theirs if isinstance(theirs, np.ndarray) else theirs.blocks,
                                      expect if isinstance(expect, np.ndarray) else expect.blocks, err_msg=name)
    q = {t.name: np.asarray(t.data) for t in reader.tensors}["blk.0.attn_q.weight"]
    if recipe == "f32":                                           # NEOX RoPE: rows as minimoe has them
        np.testing.assert_array_equal(q, model.params["layers.0.attn.q.weight"])
        tokens = np.array([[1, 5, 9, 33, 2]])
        np.testing.assert_array_equal(back(tokens), model(tokens))


@pytest.mark.parametrize("recipe", ["q4_k", "q6_k"])
def test_k_quant_recipes_stay_packed(tmp_path, recipe):
    cfg = minimoe.Config(name="wide", vocab_size=64, d_model=256, n_layers=1, n_heads=4, n_experts=2,
                         top_k=1, d_ff=256, max_seq_len=16)
    model = minimoe.Model(cfg, seed=0)
    back = minimoe.load(model.save_gguf(str(tmp_path / "k.gguf"), recipe=recipe))
    w = back.params["layers.0.moe.experts.down"]
    assert w.fmt == recipe
    np.testing.assert_array_equal(w.blocks, quant.quantize(model.params["layers.0.moe.experts.down"], recipe).blocks)
    back(np.array([[1, 2, 3]]))                                   # runs on the packed K-quant weights


def test_refuses_what_the_llama_arch_cannot_say(tmp_path):
    cfg = minimoe.Config(name="biased", vocab_size=64, d_model=64, n_layers=1, n_heads=4, n_experts=4,
                         top_k=2, d_ff=64, qkv_bias=True)
    with pytest.raises(gguf_file.GGUFError, match="qkv_bias"):
        minimoe.Model(cfg, seed=0).save_gguf(str(tmp_path / "x.gguf"))
    with pytest.raises(gguf_file.GGUFError, match="recipe"):
        tiny_moe().save_gguf(str(tmp_path / "x.gguf"), recipe="q8_k")
    nf4_model = tiny_moe()
    nf4_model.params["layers.0.moe.experts.up"] = quant.quantize(nf4_model.params["layers.0.moe.experts.up"], "nf4")
    with pytest.raises(gguf_file.GGUFError, match="layers.0.moe.experts.up: packed as nf4"):
        nf4_model.save_gguf(str(tmp_path / "nf4.gguf"))
    assert not (tmp_path / "nf4.gguf").exists()                 # atomic: nothing half-written
    with pytest.raises(gguf_file.GGUFError, match="no such"):
        minimoe.load(str(tmp_path / "missing.gguf"))


@pytest.mark.parametrize("tok", [minimoe.ByteTokenizer(), minimoe.CharTokenizer("abc de\n")])
def test_the_tokenizer_goes_with_it(tmp_path, tok):
    model = tiny_moe(vocab_size=257 if tok.kind == "byte" else 64)   # bytes and <|endoftext|>
    model.tokenizer = tok
    path = model.save_gguf(str(tmp_path / "m.gguf"))
    back = minimoe.load(path)
    text = "bad cab\n"
    np.testing.assert_array_equal(back.tokenizer.encode(text), tok.encode(text))
    reader = gguf.GGUFReader(path)
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == model.config.vocab_size                 # one token per embedding row
    if tok.kind == "byte":
        assert tokens[ord("a")] == "a" and tokens[ord(" ")] == "Ġ"    # GPT-2's printable bytes
        assert tokens[256] == "<|endoftext|>" and reader.fields["tokenizer.ggml.eos_token_id"].contents() == 256
    else:
        assert tokens[:7] == ["a", "b", "c", "Ġ", "d", "e", "Ċ"] and tokens[7] == "[PAD7]"
    assert reader.fields["tokenizer.ggml.merges"].contents() == []   # present, if empty: llama.cpp needs the key


def test_a_sentencepiece_style_tokenizer_is_written_as_llama_cpp_spm(tmp_path):
    """Mixtral's tokenizer.json (BPE with byte fallback, "▁" for spaces) -> tokenizer.ggml.model
    "llama": the tokens as they are, <0xXX> as BYTE, a merged token's score minus its merge rank."""
    import os
    tok = minimoe.load_tokenizer(os.path.join(os.path.dirname(__file__), "fixtures", "tokenizers", "mixtral",
                                              "tokenizer.json"))
    model = tiny_moe(vocab_size=1024)
    model.tokenizer = tok
    path = model.save_gguf(str(tmp_path / "m.gguf"))
    reader = gguf.GGUFReader(path)
    assert reader.fields["tokenizer.ggml.model"].contents() == "llama"
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    scores = reader.fields["tokenizer.ggml.scores"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    vocab = tok.spec["model"]["vocab"]
    first = tok.spec["model"]["merges"][0]
    first = first.replace(" ", "") if isinstance(first, str) else "".join(first)
    assert scores[vocab[first]] == 0.0 and tokens[vocab[first]] == first          # merge rank 0
    assert types[vocab["<0x41>"]] == gguf.TokenType.BYTE and tokens[1] == "<s>"
    assert reader.fields["tokenizer.ggml.bos_token_id"].contents() == 1
    np.testing.assert_array_equal(minimoe.load(path).tokenizer.encode("Hello world"), tok.encode("Hello world"))


def tiny_gpt_oss(truncate=False, **over):
    import dataclasses
    cfg = minimoe.Config.preset("tiny-gpt-oss")
    cfg = dataclasses.replace(cfg, rope_scaling={**cfg.rope_scaling, "truncate": truncate}, **over)
    model = minimoe.Model(cfg, seed=2)
    rng = np.random.default_rng(5)
    for name, w in model.params.items():
        if name.endswith(("sinks", "bias")):                       # nonzero, so a lost one shows
            w[...] = rng.standard_normal(w.shape).astype(w.dtype)
    return model


@pytest.mark.parametrize("truncate", [False, True])
@pytest.mark.parametrize("recipe", ["f32", "mxfp4"])
def test_gpt_oss_round_trip(tmp_path, recipe, truncate):
    model = tiny_gpt_oss(truncate)
    if truncate:
        path = model.save_gguf(str(tmp_path / "gpt-oss.gguf"), recipe=recipe)
    else:
        with pytest.warns(RuntimeWarning, match="truncate is false"):
            path = model.save_gguf(str(tmp_path / "gpt-oss.gguf"), recipe=recipe)
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == "gpt-oss"
    assert reader.fields["gpt-oss.attention.sliding_window"].contents() == 8
    assert reader.fields["gpt-oss.rope.scaling.type"].contents() == "yarn"
    names = {t.name for t in reader.tensors}
    assert {"blk.0.attn_sinks.weight", "blk.1.post_attention_norm.weight", "blk.0.ffn_gate_inp.bias",
            "blk.0.ffn_down_exps.bias", "blk.1.attn_output.bias"} <= names   # convert_hf_to_gguf.py's names
    back = minimoe.load(path)
    assert back.config == minimoe.Config(**{**model.config.__dict__, "name": back.config.name})
    for name, ours in model.params.items():
        theirs = back.params[name]
        expect = ours if isinstance(theirs, np.ndarray) else quant.quantize(ours, recipe)
        np.testing.assert_array_equal(theirs if isinstance(theirs, np.ndarray) else theirs.blocks,
                                      expect if isinstance(expect, np.ndarray) else expect.blocks, err_msg=name)
    tokens = np.array([[1, 5, 9, 33, 2, 7, 7, 9, 100, 3, 4]])
    if recipe == "f32":
        np.testing.assert_array_equal(back(tokens), model(tokens))


@pytest.mark.filterwarnings("ignore:.*truncate is false")
def test_gpt_oss_refuses_what_llama_cpp_cannot_say(tmp_path):
    with pytest.raises(gguf_file.GGUFError, match="even layers"):
        tiny_gpt_oss(sliding_layers=[1]).save_gguf(str(tmp_path / "x.gguf"))
    with pytest.raises(gguf_file.GGUFError, match="swiglu_limit"):
        tiny_gpt_oss(swiglu_limit=5.0).save_gguf(str(tmp_path / "x.gguf"))
    with pytest.raises(gguf_file.GGUFError, match="attention_factor"):
        import dataclasses
        m = tiny_gpt_oss()
        cfg = dataclasses.replace(m.config, rope_scaling={**m.config.rope_scaling, "attention_factor": 1.5})
        minimoe.Model(cfg, seed=0).save_gguf(str(tmp_path / "x.gguf"))
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("d_expert", [64, 32])
def test_the_dense_width_comes_back_when_the_experts_are_narrower(tmp_path, d_expert):
    """llama/mixtral GGUF has one FFN width (the experts'); minimoe's own key carries d_ff back, so
    minimoe -> GGUF -> minimoe gives an equal config even when d_ff != d_expert."""
    cfg = minimoe.Config(name="m", vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                         n_experts=4, top_k=2, d_ff=64, d_expert=d_expert, max_seq_len=32)
    model = minimoe.Model(cfg, seed=1)
    path = model.save_gguf(str(tmp_path / "m.gguf"))
    reader = gguf.GGUFReader(path)
    assert reader.fields["llama.feed_forward_length"].contents() == d_expert
    assert ("minimoe.feed_forward_length" in reader.fields) == (d_expert != cfg.d_ff)
    back = minimoe.load(path)
    assert back.config == minimoe.Config(**{**cfg.__dict__, "name": back.config.name})


@pytest.mark.parametrize("fmt, gguf_type", [("bf16", "BF16"), ("fp16", "F16")])
def test_half_precision_weights_go_out_as_stored(tmp_path, fmt, gguf_type):
    """A model holding bf16 / fp16 weights (as a Hugging Face folder loads) writes them as GGUF's
    BF16 / F16, byte for byte, and reads them back as their float32 widening."""
    model = tiny_moe()
    name = "layers.0.attn.q.weight"
    model.params[name] = quant.quantize(model.params[name], fmt)
    path = model.save_gguf(str(tmp_path / "m.gguf"))
    tensor = next(t for t in gguf.GGUFReader(path).tensors if t.name == "blk.0.attn_q.weight")
    assert tensor.tensor_type == getattr(gguf.GGMLQuantizationType, gguf_type)
    back = minimoe.load(path)
    want = model.params[name].dequantize()
    assert back.params[name].dtype == np.float32
    np.testing.assert_array_equal(back.params[name], want)
