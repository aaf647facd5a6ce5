"""Every peer check of the exports in one run (docs/export.md):

  transformers   for each family save_hf writes (mixtral, qwen3_moe, olmoe, qwen2_moe, gpt_oss,
                 deepseek_v3, deepseek_v2): the max |logit
                 difference| between minimoe and AutoModelForCausalLM on the exported folder (fp32)
  llama.cpp      for each GGUF architecture (llama, qwen3moe, olmoe) and recipe (f32, q8_0, q4_0,
                 mxfp4): how many of 64 greedy tokens llama-cpp-python decodes the same as minimoe
                 running the same file

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
        import llama_cpp  # noqa: F401
        from test_llama_cpp_export import PROMPT, greedy_llama_cpp, model_for_arch
    except ImportError as e:
        print(f"llama.cpp: skipped ({e}); pip install llama-cpp-python")
        return
    for arch in ("llama", "qwen3moe", "olmoe"):
        model = model_for_arch(arch, preset)
        for recipe in ("f32", "q8_0", "q4_0", "mxfp4"):
            path = model.save_gguf(os.path.join(out, f"{model.config.name}-{recipe}.gguf"), recipe=recipe)
            ours = minimoe.load(path).generate(np.array(PROMPT), steps)[len(PROMPT):].tolist()
            theirs = greedy_llama_cpp(path, PROMPT, steps)
            same = sum(a == b for a, b in zip(ours, theirs))
            print(f"llama.cpp  {preset} {arch:8s} {recipe:6s} greedy tokens equal: {same}/{steps}")


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
    ap.add_argument("--preset", default="tiny-moe", help="model for the llama.cpp part (default tiny-moe)")
    ap.add_argument("--out", default=None, help="folder for the exported files (default: a temporary one)")
    args = ap.parse_args(argv)
    print(f"CPU: {cpu_model()}")
    out = args.out or tempfile.mkdtemp(prefix="minimoe-export-")
    os.makedirs(out, exist_ok=True)
    transformers_part(out)
    llama_cpp_part(out, args.preset)


if __name__ == "__main__":
    main()
