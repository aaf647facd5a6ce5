"""Exercise: the backward pass of the router, for its three rules.   Grade: minimoe grade router_backward.py

Shape legend: N tokens, E experts, K top-k.

The forward pass (minimoe/nn/router.py, `select`) turns logits (N, E) into K weights per token:
    "softmax_topk" (Mixtral): probs = softmax(logits); experts = the K largest probs;
                   g = probs[experts]; weights = g / sum(g) if renorm else g
    "topk_softmax" (gpt-oss): experts = the K largest logits; weights = softmax(logits[experts])
    "sigmoid_topk" (DeepSeek-V3): s = sigmoid(logits); experts = the K largest s;
                   g = s[experts]; weights = g / sum(g) (renorm is always True here)

The choice of experts is a hard selection with no gradient: treat `experts` as constants. Given
dweights = dL/dweights (N, K), return dL/dlogits (N, E). The grader checks each rule (and
softmax_topk without renorm) by float64 finite differences.
"""
import numpy as np

EXERCISE = "router_backward"


def router_backward(dweights: np.ndarray, logits: np.ndarray, experts: np.ndarray, rule: str,
                    renorm: bool) -> np.ndarray:
    """dweights (N, K), logits (N, E), experts (N, K) int, rule, renorm -> dlogits (N, E)."""
    raise NotImplementedError("write the router backward pass for the three rules")
