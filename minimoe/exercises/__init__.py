"""Auto-graded exercises in the cs231n style: a file with a function's body removed, and a grader.

    minimoe grade --list                    the exercises and what grades each
    minimoe grade --start rmsnorm_backward  copy the stub into the working directory
    minimoe grade rmsnorm_backward.py       grade it (or: python -m minimoe.exercises.grade FILE)

Each stub (minimoe/exercises/stubs/NAME.py) names its exercise (`EXERCISE = "NAME"`) and holds one
function of that name to write. The graders and the reference solutions (minimoe's own code, in
the stub's signature) are in graders.py; grade.py loads a file and prints the score.
docs/teaching.md says how to run a graded course with them.
"""
from __future__ import annotations

import os

from minimoe.exercises.graders import GRADERS, REFERENCES

# name -> (topic, what grades it), in the order of the course
EXERCISES: dict[str, tuple[str, str]] = {
    "rmsnorm_backward": ("RMSNorm backward", "float64 finite differences of nn/norm.rmsnorm"),
    "rope_backward": ("RoPE backward", "float64 finite differences of nn/rope.rotate"),
    "attention_backward": ("causal attention backward", "float64 finite differences of nn/attention.attend"),
    "swiglu_backward": ("SwiGLU backward", "float64 finite differences of nn/ffn.glu_forward"),
    "router_backward": ("router backward, three rules", "float64 finite differences of nn/router.select "
                        "(softmax_topk with and without renorm, topk_softmax, sigmoid_topk)"),
    "moe_combine_backward": ("MoE combine backward", "float64 finite differences of nn/moe.combine"),
    "q4_0_pack": ("Q4_0 packing", "minimoe.quant.q4_0's bytes (held equal to gguf's), byte for byte"),
    "mxfp4_pack": ("MXFP4 packing", "minimoe.quant.mxfp4's bytes (held equal to gguf's), byte for byte"),
    "top_k_routing": ("top-k routing", "nn/router.select's values and a hand-computed case"),
    "load_balancing_loss": ("load-balancing loss", "train/losses values and two hand-computed cases"),
    "kv_cache_decode": ("a KV-cache decode step", "attention over the whole sequence at once"),
    "estimate_by_hand": ("the estimator by hand", "inspect/estimate's exact counts for two presets"),
}
assert list(EXERCISES) == list(GRADERS)

STUBS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stubs")


def stub_path(name: str) -> str:
    """The path of an exercise's stub file."""
    return os.path.join(STUBS, f"{name}.py")
