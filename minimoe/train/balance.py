"""Auxiliary-loss-free load balancing (Wang et al., 2024; DeepSeek-V3, 2024).

Shape legend: N tokens, E experts, K top-k, L MoE layers.

Each MoE layer holds a bias b (E,): `layers.{i}.moe.router.e_score_correction_bias`, the tensor
DeepSeek-V3's checkpoints store under that name. The router chooses each token's K experts by
score + b, but weighs them by the score alone (minimoe/nn/router.py), so b decides *which*
experts run and never *how much* each counts. No gradient reaches b. After each optimizer step:

    c_e  = assignments routed to expert e during the step (all micro-batches, all shards)
    c    = mean of c_e over the E experts
    b_e <- b_e + gamma * sign(c - c_e)      an overloaded expert's bias goes down by gamma,
                                            an underloaded one's up (a tie leaves it)

gamma is the bias update speed (DeepSeek-V3 used 0.001 for most of its training, with sigmoid
scores in (0, 1)). Because only the sign of the error is used, each bias moves by exactly gamma per
step, however uneven the load; so b stays in a range comparable to the scores it is added to.

The bias is an array in model.params (a "buffer": minimoe.params.is_buffer), so it is saved in every
checkpoint and a resumed run continues from it. Its gradient is zero, so AdamW leaves it alone.
"""
from __future__ import annotations

import numpy as np

BIAS = "moe.router.e_score_correction_bias"


def bias_name(layer: int) -> str:
    """The parameter name of layer i's correction bias."""
    return f"layers.{layer}.{BIAS}"


def expert_counts(routing: list, n_experts: int) -> dict:
    """{layer: c (E,)} the assignments the router chose per expert, from Model.forward's
    cache["routing"] (or the trainer's merged routing)."""
    return {i: np.bincount(stats["experts"].ravel(), minlength=n_experts)
            for i, stats in enumerate(routing) if stats is not None}


def update_bias(bias: np.ndarray, counts: np.ndarray, gamma: float) -> np.ndarray:
    """b <- b + gamma * sign(mean(c) - c), in place (the trainer's workers share the array).
    Returns the change (E,)."""
    error = counts.mean() - counts                       # (E,) > 0: the expert is underloaded
    step = (gamma * np.sign(error)).astype(bias.dtype)   # (E,) +gamma, -gamma or 0
    bias += step
    return step


def update_biases(params: dict, counts: dict, gamma: float) -> None:
    """Apply `update_bias` to every MoE layer's correction bias, given {layer: counts (E,)}."""
    for i, c in counts.items():
        update_bias(params[bias_name(i)], c, gamma)
