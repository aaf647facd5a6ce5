"""Exercise: top-k routing, as Mixtral does it.   Grade: minimoe grade top_k_routing.py

Shape legend: N tokens, E experts, K top-k.

    probs   = softmax(logits) over E                 (N, E)
    experts = the K experts with the largest probs, largest first (on a tie, the lower index)
    weights = probs[experts] / sum(probs[experts])   (N, K), renormalised to sum to 1

Graded against minimoe.nn.router.select and a case you can do by hand: logits [ln 1, ln 2, ln 3,
ln 4] with K = 2 give experts [3, 2] and weights [4/7, 3/7].
"""
import numpy as np

EXERCISE = "top_k_routing"


def top_k_routing(logits: np.ndarray, K: int):
    """logits (N, E), K -> (weights (N, K) float, experts (N, K) int)."""
    raise NotImplementedError("write top-k routing")
