"""llama.cpp (llama-cpp-python) runs each GGUF that save_gguf writes as minimoe runs the same file.
Skips cleanly when llama_cpp is not installed (building it takes ~20 minutes of two cores:
pip install llama-cpp-python).

Why three checks (docs/export.md, "What llama.cpp computes"): for a packed weight (q8_0, q4_0,
mxfp4) ggml's CPU matmul first rounds the ACTIVATIONS to Q8_0 blocks (its vec_dot_type: 32
values, one fp16 scale amax/127, int8 values), then takes an integer dot product. minimoe
multiplies float activations by the exact weights. On the random tiny models below, whose logits
are nearly flat (std ~0.1), that rounding moves logits by up to ~6e-3, enough to swap two
near-tied tokens. So:

  1. logits: llama.cpp's logits on a sequence equal minimoe's with the activations rounded the
     same way (q8_0_activations below, an emulation written from ggml's quantize_row_q8_0) to
     1e-5; measured <= 1.2e-7, float32 rounding. A real export bug (a permuted row, a missing
     norm, experts in another order) moves them by ~1e-2 to 1 and fails here.
  2. greedy, random model: 64 tokens of llama.cpp equal minimoe's under the same emulation.
  3. greedy, trained model: 64 tokens of llama.cpp equal minimoe's plain float path, on a model
     trained for 30 steps on a fixed rule, so that every greedy choice wins by a margin far above
     the activation rounding (the test checks that margin first; see confident_model).
"""
from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest

import minimoe

llama_cpp = pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

STEPS = 64
PROMPT = [1, 17, 42, 99, 7]
ARCHS = ["llama", "qwen3moe", "olmoe", "gpt-oss"]
RECIPES = ["f32", "q8_0", "q4_0", "mxfp4"]


def llama_cpp_model(path: str, n_ctx: int, logits_all: bool = False):
    """The file in llama.cpp on the CPU, with an F32 KV cache (llama.cpp's default F16 alone moves
    the logits by ~1e-3)."""
    return llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=2, n_gpu_layers=0,
                           logits_all=logits_all, verbose=False,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)


def greedy_llama_cpp(path: str, prompt, steps: int) -> list[int]:
    """Greedy decoding in llama.cpp from token ids, one eval per step, argmax of the last logits."""
    llm = llama_cpp_model(path, len(prompt) + steps + 1)
    llm.eval(list(prompt))
    out = []
    for _ in range(steps):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        tok = int(np.argmax(logits))
        out.append(tok)
        llm.eval([tok])
    return out


def llama_cpp_logits(path: str, tokens) -> np.ndarray:
    """llama.cpp's logits (T, V) at every position of one prefill of `tokens`."""
    llm = llama_cpp_model(path, len(tokens) + 1, logits_all=True)
    llm.eval(list(tokens))
    return np.array(llm.scores[:len(tokens)], dtype=np.float32)


def q8_0_round(x: np.ndarray) -> np.ndarray:
    """x (N, I) as ggml's CPU matmul sees it beside a packed weight: each block of 32 values
    rounded to Q8_0 (quantize_row_q8_0: d = amax / 127, q = round(x / d) to nearest even as the
    AVX2 code does, d stored as fp16) and decoded again."""
    N, I = x.shape
    xb = x.reshape(N, I // 32, 32).astype(np.float32)             # (N, I/32, 32)
    d = np.abs(xb).max(axis=-1, keepdims=True) / 127               # (N, I/32, 1)
    q = np.rint(xb / np.where(d > 0, d, 1))                        # int8 values, as floats
    return (q * d.astype(np.float16).astype(np.float32)).reshape(N, I)


@contextlib.contextmanager
def q8_0_activations():
    """minimoe run with llama.cpp's CPU numerics: the activations of every matmul with a packed
    weight rounded by q8_0_round (NumPy backend, where every matmul goes through nn/linear.py)."""
    from minimoe.nn import linear
    from minimoe.quant import QTensor
    plain = linear.MATMUL.numpy

    def matmul(x, w, b=None, experts=None):
        return plain(q8_0_round(x) if isinstance(w, QTensor) else x, w, b, experts)
    linear.MATMUL.numpy = matmul
    try:
        with minimoe.backend("numpy"):
            yield
    finally:
        linear.MATMUL.numpy = plain


def model_for_arch(arch: str, preset: str = "tiny-moe", seed: int = 0):
    """The preset as a model of each llama.cpp architecture save_gguf writes, random norms. The
    context is long enough for the prompt and 64 new tokens, so that minimoe never crops it."""
    if arch == "gpt-oss":
        preset = "tiny-gpt-oss"
    cfg = minimoe.Config.preset(preset)
    cfg = dataclasses.replace(cfg, max_seq_len=max(cfg.max_seq_len, 128))
    if arch == "gpt-oss":       # llama.cpp 0.3.36 always truncates YaRN's range (docs/export.md)
        cfg = dataclasses.replace(cfg, rope_scaling={**cfg.rope_scaling, "truncate": True})
    elif arch == "qwen3moe":
        cfg = dataclasses.replace(cfg, name=cfg.name + "-qwen3moe", qk_norm="head")
    elif arch == "olmoe":
        cfg = dataclasses.replace(cfg, name=cfg.name + "-olmoe", qk_norm="full", router_renorm=False,
                                  n_kv_heads=cfg.n_heads)
    model = minimoe.Model(cfg, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for name, w in model.params.items():
        if name.endswith("norm.weight"):
            w[...] = 1 + 0.3 * rng.standard_normal(w.shape).astype(w.dtype)
        elif name.endswith(("sinks", "bias")):           # gpt-oss: nonzero, so that they count
            w[...] = 0.5 * rng.standard_normal(w.shape).astype(w.dtype)
    return model


def confident_model(arch: str, steps: int = 30, seed: int = 0):
    """model_for_arch trained for `steps` AdamW steps (lr 1e-2, batches of 16 x 32 tokens) on one
    fixed rule: the next token is succ[token], succ a random permutation of the vocabulary. Every
    weight trains, the quantized ones included; biases and sinks start from zero. Its greedy
    choices then win by logit margins of ~2 or more (measured: smallest top-2 margin along the 64
    steps 1.9-3.9 over the 4 architectures x 4 recipes), against activation rounding that moves a
    logit by ~5e-3. Seeds and step count are fixed
    in advance, not picked by the outcome; the test measures the margin and says so if it is short."""
    from minimoe.nn import loss
    from minimoe.train.optim import AdamW
    model = model_for_arch(arch, seed=seed)
    for name, w in model.params.items():
        if name.endswith(("sinks", "bias")):   # from zero: gpt-oss learns 10x slower from random ones
            w[...] = 0
    V = model.config.vocab_size
    succ = np.random.default_rng(seed + 2).permutation(V)
    rng = np.random.default_rng(seed + 3)
    opt = AdamW(model.params, weight_decay=0.0)
    for _ in range(steps):
        seq = np.empty((16, 33), np.int64)                               # (B, T + 1)
        seq[:, 0] = rng.integers(0, V, 16)
        for j in range(32):
            seq[:, j + 1] = succ[seq[:, j]]
        logits, cache = model.forward(seq[:, :-1], train=True)          # (B, T, V)
        _, lc = loss.forward(logits, seq[:, 1:])
        opt.step(model.backward(loss.backward(1.0, lc), cache), 1e-2)
    return model


_TRAINED = {}


def trained(arch):
    if arch not in _TRAINED:
        _TRAINED[arch] = confident_model(arch)
    return _TRAINED[arch]


def first_difference(ours, theirs) -> str:
    same = sum(a == b for a, b in zip(ours, theirs))
    at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    return f"{same}/{len(ours)} greedy tokens equal" + ("" if at is None else f"; first differ at {at}")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("recipe", RECIPES)
def test_llama_cpp_logits_equal_minimoe_with_its_activation_rounding(tmp_path, arch, recipe):
    model = model_for_arch(arch)
    path = model.save_gguf(str(tmp_path / f"m-{arch}-{recipe}.gguf"), recipe=recipe)
    ours = minimoe.load(path)
    tokens = ours.generate(np.array(PROMPT), 32)
    theirs = llama_cpp_logits(path, tokens.tolist())                  # (T, V)
    with q8_0_activations():
        emulated = ours(tokens)                                       # (T, V)
    plain = ours(tokens)
    delta = float(np.abs(theirs - emulated).max())
    assert delta <= 1e-5, f"{arch} {recipe}: max |llama.cpp - minimoe (Q8_0 activations)| = {delta:.3g}"
    if recipe == "f32":                                 # no packed weight: nothing is rounded
        assert float(np.abs(theirs - plain).max()) <= 1e-5


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("recipe", RECIPES)
def test_llama_cpp_decodes_the_same_tokens_as_minimoe_with_its_activation_rounding(tmp_path, arch, recipe):
    model = model_for_arch(arch)
    path = model.save_gguf(str(tmp_path / f"m-{arch}-{recipe}.gguf"), recipe=recipe)
    with q8_0_activations():
        ours = minimoe.load(path).generate(np.array(PROMPT), STEPS)[len(PROMPT):].tolist()
    theirs = greedy_llama_cpp(path, PROMPT, STEPS)
    assert ours == theirs, f"{arch} {recipe}: {first_difference(ours, theirs)}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("recipe", RECIPES)
def test_llama_cpp_decodes_the_same_tokens_as_minimoe(tmp_path, arch, recipe):
    """minimoe's own float path, on a model whose choices are not near ties (confident_model)."""
    model = trained(arch)
    path = model.save_gguf(str(tmp_path / f"t-{arch}-{recipe}.gguf"), recipe=recipe)
    ours_model = minimoe.load(path)
    tokens = ours_model.generate(np.array(PROMPT), STEPS)
    ours = tokens[len(PROMPT):].tolist()
    logits = ours_model(tokens[:-1])[len(PROMPT) - 1:]                 # (STEPS, V): each choice
    top2 = np.sort(logits, axis=-1)[:, -2:]
    margin = float((top2[:, 1] - top2[:, 0]).min())
    noise = float(np.abs(llama_cpp_logits(path, tokens[:-1].tolist())[len(PROMPT) - 1:] - logits).max())
    assert margin > 4 * noise, f"{arch} {recipe}: the model is not confident enough for this test " \
                               f"(smallest margin {margin:.3g}, llama.cpp's logits differ by {noise:.3g})"
    theirs = greedy_llama_cpp(path, PROMPT, STEPS)
    assert ours == theirs, f"{arch} {recipe}: {first_difference(ours, theirs)}"


@pytest.mark.parametrize("tok", [minimoe.ByteTokenizer(), minimoe.CharTokenizer("abcdefghijklmnopqrstuvwxyz ,.\n")])
def test_llama_cpp_tokenizes_like_minimoe(tmp_path, tok):
    """The GGUF vocabulary (tokenizer.ggml.model gpt2, an empty merges array) gives llama.cpp
    minimoe's ids; a file with only the vocabulary loads (vocab_only)."""
    model = minimoe.Model(minimoe.Config.preset("tiny-moe"), seed=0, tokenizer=tok)
    path = model.save_gguf(str(tmp_path / "tok.gguf"))
    llm = llama_cpp.Llama(model_path=path, n_ctx=64, n_gpu_layers=0, verbose=False, vocab_only=True)
    texts = ["the cat sat, on a mat.\nabc", "a  b   c.\n\n"]
    if isinstance(tok, minimoe.ByteTokenizer):
        texts += ["héllo wörld ✓ 日本", "tabs\tand\r\nbytes \x01\x7f"]
    for text in texts:
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) == tok.encode(text).tolist(), text


# Hugging Face tokenizers (the committed fixtures, tests/fixtures/tokenizers/) through a GGUF
# vocabulary: texts without added tokens, which llama.cpp and `tokenizers` match differently.
# Measured 2026-12-05 with llama-cpp-python 0.3.36: gpt2, llama3, deepseek-v3 and llama2 all equal;
# gpt-oss 465/473 (a few whole words the trimmed fixture vocabulary holds without the merges that
# build them: `tokenizers` takes them whole, as o200k's ignore_merges says, llama.cpp's gpt-4o does
# not), qwen2 448/466 (llama.cpp does not apply Qwen2's NFC normalizer), mixtral 320/468 (all 148
# others start with a space: Mixtral's Metaspace(prepend_scheme="first") adds no "▁" before one,
# llama.cpp's SPM tokenizer always does). With tokenizer.ggml.pre "default" instead of the
# pre-tokenizer's name, 376-391 of the first five were equal.
HF_TOKENIZERS = {"gpt2": 473, "llama3": 467, "deepseek-v3": 452, "gpt-oss": 465, "qwen2": 448,
                 "llama2": 454, "mixtral": 320}


def hf_tokenizer_agreement(name: str, folder_out: str) -> tuple[int, int, int, int]:
    """The fixture tokenizer `name` exported as a vocabulary-only GGUF: (texts without added tokens
    that llama.cpp tokenizes as `tokenizers` did, of how many; the same over all texts)."""
    import json
    import os
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "tokenizers", name)
    tok = minimoe.load_tokenizer(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "expected.json"), encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    added = [a["content"] for a in tok.spec["added_tokens"]]
    plain = [not any(a in c["text"] for a in added) for c in cases]
    cfg = dataclasses.replace(minimoe.Config.preset("tiny-moe"), vocab_size=1024)
    path = minimoe.Model(cfg, seed=0, tokenizer=tok).save_gguf(os.path.join(folder_out, f"tok-{name}.gguf"))
    llm = llama_cpp.Llama(model_path=path, n_ctx=64, n_gpu_layers=0, verbose=False, vocab_only=True)
    same = [llm.tokenize(c["text"].encode("utf-8"), add_bos=False, special=True) == c["ids"] for c in cases]
    return (sum(s for s, p in zip(same, plain) if p), sum(plain), sum(same), len(cases))


@pytest.mark.parametrize("name", sorted(HF_TOKENIZERS))
def test_llama_cpp_tokenizes_like_the_hugging_face_tokenizer(tmp_path, name):
    same, n, _, _ = hf_tokenizer_agreement(name, str(tmp_path))
    assert same >= HF_TOKENIZERS[name], f"{name}: {same}/{n} texts tokenized the same"


@pytest.mark.parametrize("fixture", ["hf_gpt_oss_mxfp4", "hf_gpt_oss_window"])
def test_llama_cpp_runs_gpt_oss_loaded_from_hugging_face(tmp_path, fixture):
    """gpt-oss as minimoe loads it from a Hugging Face folder (MXFP4 experts stay packed), out to
    GGUF. Its YaRN is set to truncate=true, what llama.cpp computes (docs/export.md); logits are
    larger here (up to ~16), so the bound is relative: 1e-6 of the largest (measured 6.7e-6, 4.3e-6)."""
    import os
    # float32 (not the fixture's bf16/fp16 as stored): llama.cpp rounds the activations of a bf16 or
    # f16 matmul to that type, which moves these logits by ~0.4
    model = minimoe.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", fixture),
                         dtype=np.float32)
    cfg = dataclasses.replace(model.config, rope_scaling={**model.config.rope_scaling, "truncate": True})
    path = minimoe.Model(cfg, params=model.params).save_gguf(str(tmp_path / "gpt-oss.gguf"))
    ours = minimoe.load(path)
    tokens = np.array([1, 17, 42, 9, 7] + list(range(10, 40)))
    theirs = llama_cpp_logits(path, tokens.tolist())
    with q8_0_activations():
        emulated = ours(tokens)
    delta, scale = float(np.abs(theirs - emulated).max()), float(np.abs(emulated).max())
    assert delta <= 1e-6 * max(1.0, scale), f"{fixture}: max |llama.cpp - minimoe| = {delta:.3g} (logits up to {scale:.3g})"
