"""The router's auxiliary losses, each returning its value and the gradient it sends to the router.

Shape legend: N tokens (B*T), E experts, K top-k, L MoE layers.

Cross-entropy (minimoe/nn/loss.py) trains the experts and, through the K gate weights, the
router. Two extra losses shape the routing itself:

  * Load balancing (Switch Transformer, Fedus et al. 2021; the form Hugging Face transformers uses
    for Mixtral):   aux = E * sum_e f_e * P_e
        f_e = fraction of the N tokens that chose expert e among their K      (sums to K over e)
        P_e = mean router probability of expert e over the N tokens           (sums to 1 over e)
    f_e counts hard choices, so it has no gradient; the loss pushes on P_e, and so on the router
    probabilities of the experts that get too many tokens. With perfectly even routing
    (f_e = K/E, P_e = 1/E) the loss equals K.
    Two ways to combine layers:
        form="layers" (default): sum over MoE layers of each layer's loss (Switch Transformer).
        form="hf": transformers' `load_balancing_loss_func`, which concatenates the router outputs
                   of all layers first, so f_e and P_e are averages over layers and tokens together.
        form="sequence": DeepSeek-V3's complementary sequence-wise balance loss, per layer
                   seq = mean over sequences b of  sum_e f_be * P_be,  with
                   f_be = E / (K T) * (tokens of sequence b that chose e)   (1 at even routing)
                   P_be = mean of probs[:, e] over the T tokens of sequence b
                   It balances each sequence, not only the batch. Even routing gives 1 per layer.
                   DeepSeek-V3 pairs it, with a tiny coefficient (0.0001), with the loss-free bias
                   (minimoe/train/balance.py), which does most of the balancing.
    The first two agree when the model has one MoE layer.

  * Router z-loss (ST-MoE, Zoph et al. 2022):   z = mean_n logsumexp(logits_n)^2, summed over layers.
    It keeps router logits small, which keeps the router softmax (and float16/bfloat16 training) stable.

Each function takes `routing = cache["routing"]` from Model.forward (one dict per layer, None for
dense layers) and a coefficient `coef`. It returns the loss value *without* the coefficient (what
the logs report) and, per MoE layer, the gradient of `coef * loss`, ready for
`Model.backward(..., router_grads=combine(aux_grads, z_grads))`.
"""
from __future__ import annotations

import numpy as np


def moe_layers(routing: list) -> list[int]:
    """The indices of the layers that routed (the others are dense and report None)."""
    return [i for i, stats in enumerate(routing) if stats is not None]


def expert_fractions(stats: dict, n_experts: int) -> np.ndarray:
    """f (E,): the fraction of tokens that sent one of their K choices to each expert."""
    experts = stats["experts"]                                   # (N, K)
    counts = np.bincount(experts.ravel(), minlength=n_experts)   # (E,)
    return counts / experts.shape[0]                             # (E,), sums to K


FORMS = ("layers", "hf", "sequence")


def load_balancing_loss(routing: list, coef: float = 1.0, form: str = "layers", seq_len: int | None = None):
    """-> (aux loss (float), {layer: dprobs (N, E)}), where dprobs is d(coef * aux)/d(probs).
    form="sequence" needs seq_len T (the N rows are N/T sequences of T, one after the other)."""
    layers = moe_layers(routing)
    if not layers:
        return 0.0, {}
    if form not in FORMS:
        raise ValueError(f"load-balancing form must be one of {FORMS}, found {form!r}")
    E = routing[layers[0]]["probs"].shape[1]
    grads = {}
    if form == "sequence":
        return sequence_balance_loss(routing, layers, coef, seq_len)
    if form == "layers":
        loss = 0.0
        for i in layers:
            probs = routing[i]["probs"]                          # (N, E)
            N = probs.shape[0]
            f = expert_fractions(routing[i], E)                  # (E,)
            P = probs.mean(axis=0)                               # (E,)
            loss += float(E * np.sum(f * P))
            # aux = E * sum_e f_e * (1/N) sum_n probs[n, e]  =>  d aux / d probs[n, e] = E f_e / N
            grads[i] = np.broadcast_to((coef * E / N) * f, probs.shape).astype(probs.dtype)  # (N, E)
        return loss, grads
    # form == "hf": one f and one P over the L*N (layer, token) rows, as transformers computes them
    probs_all = np.concatenate([routing[i]["probs"] for i in layers])          # (L*N, E)
    experts_all = np.concatenate([routing[i]["experts"] for i in layers])      # (L*N, K)
    LN = probs_all.shape[0]
    f = np.bincount(experts_all.ravel(), minlength=E) / LN                    # (E,)
    P = probs_all.mean(axis=0)                                                # (E,)
    loss = float(E * np.sum(f * P))
    for i in layers:
        probs = routing[i]["probs"]
        grads[i] = np.broadcast_to((coef * E / LN) * f, probs.shape).astype(probs.dtype)
    return loss, grads


def sequence_balance_loss(routing: list, layers: list, coef: float, T: int | None):
    """DeepSeek-V3's sequence-wise form (see the module doc) -> (loss, {layer: dprobs (N, E)})."""
    if not T:
        raise ValueError("the sequence-wise balance loss needs seq_len, the tokens per sequence")
    loss, grads = 0.0, {}
    for i in layers:
        probs, experts = routing[i]["probs"], routing[i]["experts"]   # (N, E), (N, K)
        N, E = probs.shape
        K = experts.shape[1]
        Bs = N // T                                              # sequences
        onehot = np.zeros((N, E))
        onehot[np.arange(N)[:, None], experts] = 1.0              # (N, E) 1 where n chose e
        f = onehot.reshape(Bs, T, E).sum(axis=1) * (E / (K * T))  # (Bs, E)
        P = probs.reshape(Bs, T, E).mean(axis=1)                  # (Bs, E)
        loss += float(np.mean(np.sum(f * P, axis=-1)))
        # seq = (1/Bs) sum_b sum_e f_be (1/T) sum_{t in b} probs[t, e]  =>  d/dprobs[t, e] = f_be / (Bs T)
        g = np.repeat(f, T, axis=0) * (coef / (Bs * T))           # (N, E)
        grads[i] = g.astype(probs.dtype)
    return loss, grads


def z_loss(routing: list, coef: float = 1.0):
    """-> (z loss (float), {layer: dlogits (N, E)}), where dlogits is d(coef * z)/d(router logits)."""
    loss, grads = 0.0, {}
    for i in moe_layers(routing):
        logits = routing[i]["logits"]                            # (N, E)
        N = logits.shape[0]
        m = logits.max(axis=-1, keepdims=True)                   # (N, 1)
        e = np.exp(logits - m)                                   # (N, E)
        lse = m + np.log(e.sum(axis=-1, keepdims=True))          # (N, 1) logsumexp
        loss += float(np.mean(lse * lse))
        softmax = e / e.sum(axis=-1, keepdims=True)              # (N, E) = d lse / d logits
        # z = (1/N) sum_n lse_n^2  =>  d z / d logits[n, e] = 2 lse_n softmax[n, e] / N
        grads[i] = ((2.0 * coef / N) * lse * softmax).astype(logits.dtype)
    return loss, grads


def combine(dprobs: dict | None = None, dlogits: dict | None = None) -> dict:
    """{layer: dprobs} and {layer: dlogits} -> {layer: (dprobs or None, dlogits or None)}, the
    `router_grads` argument of Model.backward."""
    dprobs, dlogits = dprobs or {}, dlogits or {}
    return {i: (dprobs.get(i), dlogits.get(i)) for i in sorted(set(dprobs) | set(dlogits))}
