"""llama.cpp (llama-cpp-python) loads each GGUF that save_gguf writes and greedy-decodes the same
64 tokens as minimoe running the same file. Skips cleanly when llama_cpp is not installed
(building it takes ~20 minutes of two cores: pip install llama-cpp-python)."""
from __future__ import annotations

import numpy as np
import pytest

import minimoe

llama_cpp = pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

STEPS = 64
PROMPT = [1, 17, 42, 99, 7]


def greedy_llama_cpp(path: str, prompt, steps: int) -> list[int]:
    """Greedy decoding in llama.cpp from token ids, one eval per step, argmax of the last logits.
    The KV cache is F32 (llama.cpp's default F16 alone moves the logits by ~1e-3, enough to flip a
    near-tie of a random model)."""
    llm = llama_cpp.Llama(model_path=path, n_ctx=len(prompt) + steps + 1, n_threads=2, n_gpu_layers=0,
                          logits_all=False, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    llm.eval(list(prompt))
    out = []
    for _ in range(steps):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        tok = int(np.argmax(logits))
        out.append(tok)
        llm.eval([tok])
    return out


def model_for_arch(arch: str, preset: str = "tiny-moe", seed: int = 0):
    """The preset as a model of each llama.cpp architecture save_gguf writes, random norms."""
    import dataclasses
    cfg = minimoe.Config.preset(preset)
    if arch == "qwen3moe":
        cfg = dataclasses.replace(cfg, name=cfg.name + "-qwen3moe", qk_norm="head")
    elif arch == "olmoe":
        cfg = dataclasses.replace(cfg, name=cfg.name + "-olmoe", qk_norm="full", router_renorm=False,
                                  n_kv_heads=cfg.n_heads)
    model = minimoe.Model(cfg, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for name, w in model.params.items():
        if name.endswith("norm.weight"):
            w[...] = 1 + 0.3 * rng.standard_normal(w.shape).astype(w.dtype)
    return model


# Measured with llama-cpp-python 0.3.36 (built without AMX) on 2026-12-05: these do not yet match,
# and issue 14 stays open until they do. Strict, so a fix shows up as a failing XPASS.
NOT_YET = {("olmoe", "q8_0"): "0/64 tokens equal, the first differs",
           ("olmoe", "q4_0"): "0/64 tokens equal, the first differs",
           ("llama", "mxfp4"): "11/64 tokens equal", ("qwen3moe", "mxfp4"): "46/64 tokens equal",
           ("olmoe", "mxfp4"): "13/64 tokens equal"}


@pytest.mark.parametrize("arch", ["llama", "qwen3moe", "olmoe"])
@pytest.mark.parametrize("recipe", ["f32", "q8_0", "q4_0", "mxfp4"])
def test_llama_cpp_decodes_the_same_tokens(tmp_path, arch, recipe, request):
    if (arch, recipe) in NOT_YET:
        request.applymarker(pytest.mark.xfail(strict=True, reason=NOT_YET[arch, recipe]))
    model = model_for_arch(arch)
    path = model.save_gguf(str(tmp_path / f"m-{arch}-{recipe}.gguf"), recipe=recipe)
    ours = minimoe.load(path).generate(np.array(PROMPT), STEPS)[len(PROMPT):].tolist()
    theirs = greedy_llama_cpp(path, PROMPT, STEPS)
    same = sum(a == b for a, b in zip(ours, theirs))
    assert same == STEPS, f"{arch} {recipe}: {same}/{STEPS} greedy tokens equal; first differ at " \
                          f"{next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)}"


@pytest.mark.xfail(strict=True, reason="llama.cpp 0.3.36 refuses to load the vocabulary-only GGUF (issue 14)")
@pytest.mark.parametrize("tok", [minimoe.ByteTokenizer(), minimoe.CharTokenizer("abcdefghijklmnopqrstuvwxyz ,.\n")])
def test_llama_cpp_tokenizes_like_minimoe(tmp_path, tok):
    """The GGUF vocabulary (tokenizer.ggml.model gpt2, no merges) gives llama.cpp minimoe's ids."""
    cfg = minimoe.Config.preset("tiny-moe")
    model = minimoe.Model(cfg, seed=0, tokenizer=tok)
    path = model.save_gguf(str(tmp_path / "tok.gguf"))
    llm = llama_cpp.Llama(model_path=path, n_ctx=64, n_gpu_layers=0, verbose=False, vocab_only=True)
    text = "the cat sat, on a mat.\nabc"
    assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) == tok.encode(text).tolist()
