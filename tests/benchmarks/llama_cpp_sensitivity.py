"""What the llama.cpp checks of tests/test_llama_cpp_export.py see (docs/export.md, "What llama.cpp
computes"). Needs llama_cpp and gguf:

    PYTHONPATH=$PWD /work/venv-ref/bin/python tests/benchmarks/llama_cpp_sensitivity.py

  export bugs   three bugs that minimoe's own GGUF round trip cannot see (save and load agree,
                llama.cpp reads the file otherwise), planted by patching minimoe.io.gguf_file:
                which of the three llama.cpp checks fail, and by how much
  near ties     the random model's first choice where minimoe's float path and llama.cpp differ
  YaRN truncate the Hugging Face gpt-oss fixtures exported as they are (truncate=false) and with
                truncate=true: max |dlogit| against llama.cpp
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import tempfile
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, ".."))

try:
    import llama_cpp  # noqa: F401
except ImportError:
    sys.exit("llama_cpp is not installed: pip install llama-cpp-python")
import minimoe                          # noqa: E402
import test_llama_cpp_export as T       # noqa: E402
from minimoe.io import gguf_file        # noqa: E402


def swapped_qk_norm(names):
    """tensor_names with attn_q_norm and attn_k_norm exchanged: written and read swapped."""
    def swapped(cfg):
        swap = {"attn_q_norm": "attn_k_norm", "attn_k_norm": "attn_q_norm"}
        out = []
        for g, ours, packed in names(cfg):
            parts = g.split(".")
            if len(parts) == 4:
                parts[2] = swap.get(parts[2], parts[2])
            out.append((".".join(parts), ours, packed))
        return out
    return swapped


def export_bugs() -> None:
    keep = {k: getattr(gguf_file, k) for k in ("rope_interleave_rows", "rope_halves_rows", "tensor_names")}
    same = lambda w, n: w                                              # noqa: E731
    bugs = {"no RoPE row permutation": ("llama", dict(rope_interleave_rows=same, rope_halves_rows=same)),
            "q_norm and k_norm swapped": ("olmoe", dict(tensor_names=swapped_qk_norm(keep["tensor_names"]))),
            "q_norm and k_norm swapped ": ("qwen3moe", dict(tensor_names=swapped_qk_norm(keep["tensor_names"])))}
    checks = [("logits", T.test_llama_cpp_logits_equal_minimoe_with_its_activation_rounding),
              ("greedy random", T.test_llama_cpp_decodes_the_same_tokens_as_minimoe_with_its_activation_rounding),
              ("greedy trained", T.test_llama_cpp_decodes_the_same_tokens_as_minimoe)]
    for bug, (arch, patch) in bugs.items():
        for k, v in patch.items():
            setattr(gguf_file, k, v)
        T._TRAINED.clear()
        try:
            for recipe in ("f32", "q8_0"):
                for what, check in checks:
                    try:
                        check(pathlib.Path(tempfile.mkdtemp()), arch, recipe)
                        result = "passes (the bug is not seen)"
                    except AssertionError as e:
                        result = "FAILS: " + str(e).splitlines()[0]
                    print(f"bug {bug.strip():26s} {arch:8s} {recipe:5s} {what:14s} {result}")
        finally:
            for k, v in keep.items():
                setattr(gguf_file, k, v)
            T._TRAINED.clear()


def near_ties() -> None:
    for arch, recipe in [("olmoe", "q8_0"), ("olmoe", "q4_0"), ("qwen3moe", "mxfp4")]:
        path = T.model_for_arch(arch).save_gguf(os.path.join(tempfile.mkdtemp(), "m.gguf"), recipe=recipe)
        ours = minimoe.load(path)
        tokens = np.array(T.PROMPT)
        plain, cpp = ours(tokens)[-1], T.llama_cpp_logits(path, tokens.tolist())[-1]
        with T.q8_0_activations():
            emulated = ours(tokens)[-1]
        a, b = np.argsort(plain)[-2:][::-1]
        print(f"first choice {arch:8s} {recipe:5s}: minimoe {a} over {b} by {plain[a] - plain[b]:.2e}; "
              f"|dlogit| to llama.cpp {np.abs(cpp - plain).max():.2e}; llama.cpp picks {cpp.argmax()}, "
              f"minimoe with Q8_0 activations {emulated.argmax()}")


def yarn_truncate() -> None:
    tokens = np.array([1, 17, 42, 9, 7] + list(range(10, 40)))
    for fixture in ("hf_gpt_oss_mxfp4", "hf_gpt_oss_window"):
        model = minimoe.load(os.path.join(HERE, "..", "fixtures", fixture))
        for truncate in (False, True):
            cfg = dataclasses.replace(model.config, rope_scaling={**model.config.rope_scaling, "truncate": truncate})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                path = minimoe.Model(cfg, params=model.params).save_gguf(os.path.join(tempfile.mkdtemp(), "g.gguf"))
            ours = minimoe.load(path)
            cpp = T.llama_cpp_logits(path, tokens.tolist())
            with T.q8_0_activations():
                emulated = ours(tokens)
            print(f"yarn {fixture:17s} truncate={str(truncate):5s}: max |dlogit| llama.cpp vs minimoe "
                  f"{np.abs(cpp - ours(tokens)).max():.2e}, vs minimoe with Q8_0 activations "
                  f"{np.abs(cpp - emulated).max():.2e} ({len(tokens)} tokens)")


if __name__ == "__main__":
    export_bugs()
    near_ties()
    yarn_truncate()
