"""The router: score every expert for every token, keep the top K, and weight them.

Shape legend: N tokens (B*T flattened), C d_model, E experts, K top-k.

    logits = x Wr (+ br)                                         (N, E)
    "softmax_topk" (Mixtral, Qwen, OLMoE): probs = softmax(logits); keep the K largest;
                   with router_renorm, rescale those K to sum to 1 (Mixtral, Qwen3 do; OLMoE doesn't)
    "topk_softmax" (gpt-oss, mistral-src): keep the K largest logits, softmax over those K only
    "sigmoid_topk" (DeepSeek-V3): scores = sigmoid(logits); keep the K largest; renormalise
    every rule then multiplies the K weights by router_scale (DeepSeek's routed_scaling_factor)

DeepSeek chooses the K experts in two more ways (`choose`); neither changes how they are weighted:
    correction bias (V3's e_score_correction_bias, (E,)): the experts are chosen by scores + bias,
                   but weighted by the scores alone. DeepSeek nudges the bias between training steps
                   to balance the load, instead of an auxiliary loss.
    group-limited  (n_group, topk_group): the E experts form n_group groups; each token first keeps
                   its topk_group best groups, then its K best experts inside them (V3 ranks a group
                   by the sum of its two best scores, V2 by its best score). This bounds how many
                   devices a token's experts live on.

The selection is a hard choice and has no gradient. The gradient reaches the router through
the K weights of the chosen experts (and through the auxiliary losses on `probs`/`logits`).

The router reports its own statistics: tokens per expert and probability mass per expert.
"""
from __future__ import annotations

import numpy as np

from minimoe.config import Config
from minimoe.kernels.dispatch import Leaf, all_float32
from minimoe.nn import linear
from minimoe.nn.ffn import sigmoid


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def top_k(scores: np.ndarray, K: int) -> np.ndarray:
    """(N, E) -> (N, K) indices of the K largest scores per row, largest first (ties: lower index)."""
    return np.argsort(-scores, axis=-1, kind="stable")[:, :K]


def group_limited_top_k(choice: np.ndarray, K: int, n_group: int, topk_group: int,
                        group_score: str) -> np.ndarray:
    """choice (N, E) -> (N, K) indices: the K best experts inside each row's topk_group best groups.
    A group's rank is the sum of its two best scores ("top2_sum", DeepSeek-V3) or its best ("max", V2)."""
    N, E = choice.shape
    grouped = choice.reshape(N, n_group, E // n_group)   # (N, n_group, E/n_group), groups are contiguous
    if group_score == "top2_sum":
        rank = np.sort(grouped, axis=-1)[..., -2:].sum(axis=-1)  # (N, n_group)
    else:
        rank = grouped.max(axis=-1)                      # (N, n_group)
    best = top_k(rank, topk_group)                       # (N, topk_group) the groups a token may use
    allowed = np.zeros((N, n_group), dtype=bool)
    allowed[np.arange(N)[:, None], best] = True          # (N, n_group)
    allowed = np.repeat(allowed, E // n_group, axis=1)   # (N, n_group) -> (N, E)
    return top_k(np.where(allowed, choice, -np.inf), K)  # (N, K); other groups' experts never win


def choose(scores: np.ndarray, K: int, groups: int, topk_groups: int, bias: np.ndarray | None,
           group_score: str) -> np.ndarray:
    """scores (N, E) -> experts (N, K): plain top-k, or DeepSeek's (bias added, groups first)."""
    choice = scores if bias is None else scores + bias   # (N, E) + (E,): the bias only chooses
    if groups > 1:
        return group_limited_top_k(choice, K, groups, topk_groups, group_score)
    return top_k(choice, K)


def select(logits: np.ndarray, K: int, rule: str, renorm: bool, scale: float, groups: int = 1,
           topk_groups: int = 1, bias: np.ndarray | None = None):
    """The routing rule: logits (N, E) -> (weights (N, K), experts (N, K) int, probs (N, E), g (N, K)),
    where g are the chosen scores the weights are made from (kept for the backward pass).
    groups/topk_groups: DeepSeek's group-limited choice; bias (E,): V3's correction bias."""
    rows = np.arange(logits.shape[0])[:, None]           # (N, 1)
    if rule == "softmax_topk":
        probs = softmax(logits)                          # (N, E)
        experts = choose(probs, K, groups, topk_groups, None, "max")  # (N, K)
        g = probs[rows, experts]                         # (N, K) chosen probabilities
        weights = g / g.sum(axis=-1, keepdims=True) if renorm else g
    elif rule == "topk_softmax":
        probs = softmax(logits)                          # (N, E), for statistics and the aux loss
        experts = top_k(logits, K)                       # (N, K)
        g = logits[rows, experts]                        # (N, K) chosen logits
        weights = softmax(g)                             # (N, K)
    else:  # "sigmoid_topk"
        scores = sigmoid(logits)                         # (N, E), each in (0, 1)
        probs = scores / scores.sum(axis=-1, keepdims=True)
        experts = choose(scores, K, groups, topk_groups, bias, "top2_sum")  # (N, K)
        g = scores[rows, experts]                        # (N, K) weighted by the scores, bias-free
        weights = g / g.sum(axis=-1, keepdims=True) if renorm else g
    return weights * np.asarray(scale, dtype=weights.dtype), experts, probs, g


SELECT = Leaf("route", select, "minimoe.kernels.ops:select",
              when=lambda logits, K, rule, renorm, scale, groups=1, *_: (
                  rule in ("softmax_topk", "topk_softmax") and groups == 1 and all_float32(logits)))


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, cfg: Config,
            correction_bias: np.ndarray | None = None):
    """x (N, C), w (E, C), b (E,) or None -> (weights (N, K), experts (N, K) int, stats, cache).
    correction_bias (E,): DeepSeek-V3's e_score_correction_bias, which only chooses (see above).

    stats: "tokens_per_expert" (E,) assignments per expert, "prob_mass" (E,) router probability
    summed over the N tokens, "probs" (N, E) the full router distribution, "logits" (N, E).
    """
    logits, lin = linear.forward(x, w, b, name="moe.router")  # (N, C) -> (N, E)
    rule = (cfg.router, cfg.router_renorm, cfg.router_scale,
            cfg.router_groups, cfg.router_topk_groups, correction_bias)  # (+ DeepSeek's ways of choosing)
    weights, experts, probs, g = SELECT(logits, cfg.top_k, *rule, name="moe.router.topk")  # (N, K) (N, K) (N, E)
    stats = {
        "tokens_per_expert": np.bincount(experts.ravel(), minlength=cfg.n_experts),  # (E,)
        "prob_mass": probs.sum(axis=0),                                                # (E,)
        "probs": probs, "logits": logits,
    }
    cache = (lin, logits, probs, experts, g, weights, cfg.router, cfg.router_renorm, cfg.router_scale)
    return weights, experts, stats, cache


def backward(dweights: np.ndarray, cache, dprobs: np.ndarray | None = None,
             dlogits_extra: np.ndarray | None = None):
    """dweights (N, K) -> (dx (N, C), dw (E, C), db (E,) or None).

    dprobs (N, E): an extra gradient on the full `probs` (from the load-balancing loss);
    dlogits_extra (N, E): an extra gradient on the logits (from the z-loss).
    """
    lin, logits, probs, experts, g, weights, rule, renorm, scale = cache
    N, E = logits.shape
    rows = np.arange(N)[:, None]
    dweights = dweights * scale
    if rule == "topk_softmax":
        w = weights / scale
        dg = w * (dweights - (dweights * w).sum(axis=-1, keepdims=True))  # softmax over K
    elif renorm:
        Z = g.sum(axis=-1, keepdims=True)                # in the forward pass w = g / Z
        w = g / Z
        dg = (dweights - (dweights * w).sum(axis=-1, keepdims=True)) / Z
    else:
        dg = dweights
    dlogits = np.zeros_like(logits)                      # (N, E)
    if rule == "softmax_topk":
        dp = np.zeros_like(probs) if dprobs is None else dprobs.copy()
        dp[rows, experts] += dg                          # scatter (N, K) into (N, E)
        dlogits = probs * (dp - (dp * probs).sum(axis=-1, keepdims=True))
    elif rule == "topk_softmax":
        dlogits[rows, experts] = dg
        if dprobs is not None:
            dlogits += probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))
    else:  # sigmoid_topk: g = s[experts]; probs = s / sum(s)
        s = sigmoid(logits)
        ds = np.zeros_like(s)
        ds[rows, experts] = dg
        if dprobs is not None:
            tot = s.sum(axis=-1, keepdims=True)
            ds += (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True)) / tot
        dlogits = ds * s * (1 - s)
    if dlogits_extra is not None:
        dlogits = dlogits + dlogits_extra
    return linear.backward(dlogits, lin)
