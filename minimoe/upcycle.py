"""Sparse upcycling (Komatsuzaki et al., 2022): turn a trained dense model into an MoE.

Shape legend: C d_model, F the dense FFN's width, E experts, K top-k.

    moe_model = upcycle(dense_model, n_experts=8, top_k=2)
    minimoe upcycle --model runs/dense --experts 8 --top-k 2 --out runs/upcycled
    minimoe train --init runs/upcycled --data ...            training continues from it

Every dense FFN becomes an MoE layer whose E experts are copies of it:

    experts.gate (E, F, C) = E copies of ffn.gate.weight (F, C)      (up and down alike)
    router.weight (E, C)   ~ N(0, router_std), fresh

and everything else (embeddings, attention, norms, head) is copied as it is. Each expert has the
dense FFN's width F, so a token's active parameters grow K-fold; total parameters E-fold.

Why this starts where the dense model ended: with the K weights renormalised to sum to 1
(router_renorm, the default of softmax_topk), every token's output is
    sum_k w_k FFN_{e_k}(x) = (sum_k w_k) FFN(x) = FFN(x),
whatever the router chooses. So the upcycled model computes exactly what the dense one did (up to
float rounding), and training starts from the dense model's loss. The copies are identical, so at
first the router's choices change nothing and the task loss gives the router no gradient (the
renormalised weights' gradients cancel); the experts drift apart because each sees different
tokens with different weights, and the load-balancing loss trains the router from the first step.
`expert_noise` > 0 breaks the symmetry at once (each copy gets relative Gaussian noise), at the
price of the exact start.
"""
from __future__ import annotations

import numpy as np

from minimoe.errors import MinimoeError


def upcycle(dense, n_experts: int, top_k: int, router_std: float = 0.02, expert_noise: float = 0.0,
            seed: int = 0, **config_changes):
    """A new MoE Model from a dense one (see the module doc). config_changes: other Config fields
    of the MoE (router, capacity_factor, ...)."""
    from minimoe.model import Model
    from minimoe.params import param_shapes
    cfg = dense.config
    if cfg.is_moe:
        raise MinimoeError(f"upcycle takes a dense model; this one already has {cfg.n_experts} experts")
    if any(not isinstance(v, np.ndarray) for v in dense.params.values()):
        raise MinimoeError("upcycle takes a float model; this one is quantized (upcycle the float checkpoint)")
    changes = dict(n_experts=n_experts, top_k=top_k, d_expert=cfg.d_ff, dense_layers=[],
                   name=f"{cfg.name or 'dense'} upcycled to {n_experts} experts top-{top_k}")
    moe_cfg = cfg.replace(**{**changes, **config_changes})
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(moe_cfg).items():
        if name in dense.params:
            params[name] = dense.params[name].copy()
            continue
        layer, _, short = name.partition(".moe.")                   # "layers.3", "experts.gate"
        if short.startswith("experts."):
            w = dense.params[f"{layer}.ffn.{short[len('experts.'):]}.weight"]   # (F, C) or (C, F)
            stack = np.repeat(w[None], n_experts, axis=0)          # (E, F, C) or (E, C, F): E copies
            if expert_noise:
                stack = stack * (1 + expert_noise * rng.standard_normal(stack.shape))
            params[name] = stack.astype(w.dtype)
        elif short == "router.weight":
            params[name] = rng.normal(0.0, router_std, size=shape).astype(dense.dtype)   # (E, C)
        elif name.endswith("bias"):                                 # router bias, correction bias
            params[name] = np.zeros(shape, dense.dtype)
        else:
            raise MinimoeError(f"upcycle: no source for parameter {name!r} ({shape}); the MoE options "
                               f"{sorted(config_changes)} add weights a dense model does not have")
    return Model(moe_cfg, params=params, tokenizer=dense.tokenizer)
