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

Two training-time rules (the research kit of docs/routing.md):
    "noisy_topk"   (Shazeer et al., 2017): H = logits + eps * softplus(x W_noise), eps ~ N(0, 1)
                   drawn afresh at every training step; then "topk_softmax" on H. Without noise
                   (evaluation, generation) H = logits.
    "expert_choice" (Zhou et al., 2022): the experts choose the tokens. probs = softmax(logits);
                   within each sequence of T tokens, expert e takes the `capacity` tokens with the
                   highest probs[:, e], weighted by those probs. A token may be taken by several
                   experts or by none. Every expert is exactly full, so the load is balanced by
                   construction; but which tokens an expert takes depends on the whole sequence,
                   later tokens included, so it is not causal. At generation (one token at a time)
                   each token instead takes its K most probable experts, weighted by their probs.
The correction bias works with softmax_topk too; minimoe's training moves it by DeepSeek-V3's
loss-free rule (minimoe/train/balance.py).

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
        experts = choose(probs, K, groups, topk_groups, bias, "max")  # (N, K)
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
              when=lambda logits, K, rule, renorm, scale, groups=1, topk_groups=1, bias=None: (
                  rule in ("softmax_topk", "topk_softmax") and groups == 1 and bias is None
                  and all_float32(logits)))


def softplus(a: np.ndarray) -> np.ndarray:
    """log(1 + exp(a)), computed as max(a, 0) + log1p(exp(-|a|)), which never overflows."""
    return np.maximum(a, 0) + np.log1p(np.exp(-np.abs(a)))


def noisy_logits(logits: np.ndarray, noise_logits: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """Shazeer et al.'s H = logits + eps * softplus(noise_logits): (N, E) each -> (N, E).
    The learned noise_logits = x W_noise set how much noise each expert's score gets per token."""
    return logits + eps * softplus(noise_logits)         # (N, E)


def expert_choice(logits: np.ndarray, T: int, capacity: int):
    """The experts choose: logits (N, E), N = G*T tokens in G sequences of T ->
    (weights (N, E), chosen (N, E) bool, probs (N, E), slots (E, G, capacity) int).

    Expert e takes the `capacity` tokens of each sequence with the highest probs[:, e] (ties: the
    earlier token). weights[n, e] = probs[n, e] where e took n, else 0. slots[e, g] lists the
    assignments a = n*E + e that expert e took in sequence g, best first (minimoe/nn/capacity.py
    runs and combines them)."""
    N, E = logits.shape
    G = N // T
    probs = softmax(logits)                              # (N, E): each token's distribution over experts
    by_expert = probs.reshape(G, T, E).transpose(0, 2, 1)  # (G, E, T): each expert's view of a sequence
    top = np.argsort(-by_expert, axis=-1, kind="stable")[..., :capacity]  # (G, E, cap) positions
    tokens = top + (T * np.arange(G))[:, None, None]     # (G, E, cap) token indices n
    e_ids = np.arange(E)[None, :, None]                  # (1, E, 1)
    chosen = np.zeros((N, E), dtype=bool)
    chosen[tokens, e_ids] = True                         # (N, E)
    weights = np.where(chosen, probs, 0).astype(probs.dtype)  # (N, E)
    slots = (tokens * E + e_ids).transpose(1, 0, 2)      # (E, G, cap) assignments n*E + e
    return weights, chosen, probs, np.ascontiguousarray(slots)


EXPERT_CHOICE = Leaf("expert_choice", expert_choice)


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, cfg: Config,
            correction_bias: np.ndarray | None = None, w_noise: np.ndarray | None = None,
            eps: np.ndarray | None = None):
    """x (N, C), w (E, C), b (E,) or None -> (weights (N, K), experts (N, K) int, stats, cache).
    correction_bias (E,): DeepSeek-V3's e_score_correction_bias, which only chooses (see above).
    noisy_topk: w_noise (E, C), and eps (N, E) standard normal draws in training (None: no noise).
    expert_choice takes `expert_choice_forward` instead; here (generation) it is read as token
    choice: each token's K most probable experts, weighted by their probabilities.

    stats: "tokens_per_expert" (E,) assignments per expert, "prob_mass" (E,) router probability
    summed over the N tokens, "probs" (N, E) the full router distribution, "logits" (N, E).
    """
    logits, lin = linear.forward(x, w, b, name="moe.router")  # (N, C) -> (N, E)
    rule, renorm, noisy = cfg.router, cfg.router_renorm, None
    if rule == "noisy_topk":
        rule = "topk_softmax"                            # on H, Shazeer's noisy logits
        if eps is not None:
            nz, nlin = linear.forward(x, w_noise, name="moe.router.noise")  # (N, C) -> (N, E)
            logits = noisy_logits(logits, nz, eps)       # (N, E) H
            noisy = (nlin, nz, eps)
    elif rule == "expert_choice":
        rule, renorm = "softmax_topk", False             # one token at a time: its K best experts
    choice = (rule, renorm, cfg.router_scale, cfg.router_groups, cfg.router_topk_groups,
              correction_bias)                           # (+ DeepSeek's ways of choosing)
    weights, experts, probs, g = SELECT(logits, cfg.top_k, *choice, name="moe.router.topk")  # (N, K) (N, K) (N, E)
    stats = {
        "tokens_per_expert": np.bincount(experts.ravel(), minlength=cfg.n_experts),  # (E,)
        "prob_mass": probs.sum(axis=0),                                                # (E,)
        "probs": probs, "logits": logits,
    }
    cache = (lin, logits, probs, experts, g, weights, rule, renorm, cfg.router_scale, noisy)
    return weights, experts, stats, cache


def expert_choice_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, cfg: Config,
                          T: int, capacity: int):
    """Expert choice over sequences of T tokens: x (N, C) -> (weights (N, E), chosen (N, E),
    slots (E, N/T, capacity), stats, cache). The weights' columns are the experts themselves."""
    E = cfg.n_experts
    logits, lin = linear.forward(x, w, b, name="moe.router")  # (N, C) -> (N, E)
    weights, chosen, probs, slots = EXPERT_CHOICE(logits, T, capacity, name="moe.router.expert_choice")
    experts = np.broadcast_to(np.arange(E), chosen.shape)  # (N, E): column e is expert e
    stats = {
        "tokens_per_expert": chosen.sum(axis=0),         # (E,) = capacity per sequence, for each e
        "prob_mass": probs.sum(axis=0),                  # (E,)
        "probs": probs, "logits": logits,
    }
    cache = (lin, logits, probs, experts, chosen, weights, "expert_choice", False, 1.0, None)
    return weights, chosen, slots, stats, cache


def backward(dweights: np.ndarray, cache, dprobs: np.ndarray | None = None,
             dlogits_extra: np.ndarray | None = None):
    """dweights (N, K) -> (dx (N, C), grads {"router.weight": (E, C), "router.bias": (E,) if any,
    "router.noise.weight": (E, C) for noisy top-k}).

    dprobs (N, E): an extra gradient on the full `probs` (from the load-balancing loss);
    dlogits_extra (N, E): an extra gradient on the logits (from the z-loss).
    """
    lin, logits, probs, experts, g, weights, rule, renorm, scale, noisy = cache
    N, E = logits.shape
    rows = np.arange(N)[:, None]
    dweights = dweights * scale
    if rule == "expert_choice":                          # weights = probs where chosen (g: chosen)
        dp = dweights * g if dprobs is None else dweights * g + dprobs  # (N, E)
        dlogits = probs * (dp - (dp * probs).sum(axis=-1, keepdims=True))  # softmax backward
        return _linear_backward(dlogits, dlogits_extra, lin, noisy)
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
    return _linear_backward(dlogits, dlogits_extra, lin, noisy)


def _linear_backward(dlogits, dlogits_extra, lin, noisy):
    """The router's projections: dlogits (N, E) (of H, for noisy top-k) -> (dx, grads)."""
    if dlogits_extra is not None:
        dlogits = dlogits + dlogits_extra
    dx, dw, db = linear.backward(dlogits, lin)
    grads = {"router.weight": dw}
    if db is not None:
        grads["router.bias"] = db
    if noisy is not None:                                # H = logits + eps * softplus(nz)
        nlin, nz, eps = noisy
        dnz = dlogits * eps * sigmoid(nz)                # softplus' = sigmoid
        dxn, grads["router.noise.weight"], _ = linear.backward(dnz, nlin)
        dx = dx + dxn
    return dx, grads
