"""Every peer check of the exports in one run (docs/export.md):

  transformers   for each family save_hf writes (mixtral, qwen3_moe, olmoe, qwen2_moe, gpt_oss,
                 deepseek_v3, deepseek_v2): the max |logit
                 difference| between minimoe and AutoModelForCausalLM on the exported folder (fp32)
  llama.cpp      for each GGUF architecture (llama, qwen3moe, olmoe, gpt-oss) and recipe (f32, q8_0,
                 q4_0, mxfp4), on the models of tests/test_llama_cpp_export.py:
                   random   the random tiny model: how many of 64 greedy tokens llama-cpp-python
                            decodes the same as minimoe running the same file, with minimoe's
                            float path ("plain") and with the activations rounded to Q8_0 as
                            ggml's CPU matmul does ("q8_0 act"); max |dlogit| against each over
                            a 37-token sequence
                   trained  the same model trained 30 steps on a fixed rule (confident_model):
                            greedy tokens equal with minimoe's float path, and the smallest top-2
                            margin of its choices
  tokenizers     for the HF tokenizer fixtures, how many texts llama.cpp tokenizes the same

Run it with an interpreter that has torch + transformers (and llama_cpp for the second part):

    PYTHONPATH=$PWD /work/venv-ref/bin/python tests/benchmarks/export_peers.py [--preset mixtral-mini]

A part whose packages are missing is reported as skipped.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import minimoe                                        # noqa: E402
from test_hf_export import FAMILIES, TOKENS, model_for   # noqa: E402  (the same models the tests use)


def transformers_part(out: str) -> None:
    try:
        import torch
        import transformers
    except ImportError as e:
        print(f"transformers: skipped ({e})")
        return
    for family in FAMILIES:
        model = model_for(family)
        folder = os.path.join(out, f"hf-{family}")
        model.save_hf(folder)
        hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            theirs = hf(torch.from_numpy(TOKENS)).logits.numpy()
        delta = float(np.abs(theirs - model(TOKENS)).max())
        print(f"transformers {transformers.__version__}  {family:11s} max |dlogit| = {delta:.3g}  "
              f"({model.config.n_layers} layers, {model.config.n_experts} experts, {TOKENS.shape[1]} tokens)")


def llama_cpp_part(out: str, preset: str, steps: int = 64) -> None:
    try:
        import llama_cpp
        import test_llama_cpp_export as T
    except ImportError as e:
        print(f"llama.cpp: skipped ({e}); pip install llama-cpp-python")
        return
    print(f"llama-cpp-python {llama_cpp.__version__}: greedy tokens equal of {steps}, and max |dlogit|")
    for arch in T.ARCHS:
        model = T.model_for_arch(arch, preset)
        trained = T.confident_model(arch)
        for recipe in T.RECIPES:
            path = model.save_gguf(os.path.join(out, f"{arch}-{recipe}.gguf"), recipe=recipe)
            ours = minimoe.load(path)
            theirs = T.greedy_llama_cpp(path, T.PROMPT, steps)
            plain = ours.generate(np.array(T.PROMPT), steps)[len(T.PROMPT):].tolist()
            with T.q8_0_activations():
                emulated = ours.generate(np.array(T.PROMPT), steps)[len(T.PROMPT):].tolist()
            tokens = ours.generate(np.array(T.PROMPT), 32)
            cpp = T.llama_cpp_logits(path, tokens.tolist())
            d_plain = float(np.abs(cpp - ours(tokens)).max())
            with T.q8_0_activations():
                d_emu = float(np.abs(cpp - ours(tokens)).max())
            tpath = trained.save_gguf(os.path.join(out, f"trained-{arch}-{recipe}.gguf"), recipe=recipe)
            tours = minimoe.load(tpath)
            tseq = tours.generate(np.array(T.PROMPT), steps)
            tlogits = tours(tseq[:-1])[len(T.PROMPT) - 1:]
            top2 = np.sort(tlogits, axis=-1)[:, -2:]
            ttheirs = T.greedy_llama_cpp(tpath, T.PROMPT, steps)
            tsame = sum(a == b for a, b in zip(tseq[len(T.PROMPT):].tolist(), ttheirs))
            print(f"llama.cpp {arch:8s} {recipe:6s} random: plain {same(plain, theirs):2d}/{steps}  "
                  f"q8_0 act {same(emulated, theirs):2d}/{steps}  max|dlogit| plain {d_plain:.2e} "
                  f"q8_0 act {d_emu:.2e} | trained: plain {tsame:2d}/{steps}, smallest margin "
                  f"{float((top2[:, 1] - top2[:, 0]).min()):.2f}")


def same(a, b) -> int:
    return sum(x == y for x, y in zip(a, b))


def tokenizer_part(out: str) -> None:
    try:
        import llama_cpp  # noqa: F401  (first: without it the test module raises pytest's Skipped)
        import test_llama_cpp_export as T
    except ImportError as e:
        print(f"tokenizers in llama.cpp: skipped ({e})")
        return
    for name in sorted(T.HF_TOKENIZERS):
        same, n, same_all, n_all = T.hf_tokenizer_agreement(name, out)
        print(f"llama.cpp tokenizer {name:11s} {same}/{n} texts without added tokens equal "
              f"({same_all}/{n_all} with them)")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny-moe", help="model for the llama.cpp part (default tiny-moe; "
                                                          "gpt-oss uses tiny-gpt-oss)")
    ap.add_argument("--out", default=None, help="folder for the exported files (default: a temporary one)")
    args = ap.parse_args(argv)
    print(f"CPU: {cpu_model()}")
    out = args.out or tempfile.mkdtemp(prefix="minimoe-export-")
    os.makedirs(out, exist_ok=True)
    transformers_part(out)
    llama_cpp_part(out, args.preset)
    tokenizer_part(out)


if __name__ == "__main__":
    main()
