"""The Mixture-of-Experts FFN (Shazeer et al., 2017; Mixtral, Jiang et al., 2024).

Shape legend: B batch, T time, N = B*T tokens, C d_model, F expert width, E experts, K top-k,
A = N*K assignments (token, slot) pairs.

    weights, experts = router(x)                  (N, K) each: which K experts, and how much
    y[n] = sum_k weights[n, k] * Expert_{experts[n, k]}(x[n])   (+ shared experts, if any)

Each expert is a SwiGLU FFN (minimoe/nn/ffn.py); the E experts' weights are stacked into
(E, F, C) / (E, C, F) arrays. Only K of the E experts run for each token: that is the whole
point of an MoE, and why its "active" parameters are far fewer than its total.

Two forms compute the same thing:
  * `forward_loop`: the reference. Loop over experts; for each, find its tokens with `where`,
    run the expert on them and add the weighted output back (as mistral-src's moe.py does).
    Read this one first.
  * `forward`: dispatch/combine. Sort the A assignments by expert so each expert's tokens are
    contiguous, gather them, run each non-empty expert once on its slice, then undo the sort
    and sum the K weighted outputs per token. It is the form the training backward and the
    kernels use, and it is tested equal to the loop.

`p` holds one layer's MoE parameters by short name: "router.weight" (+ "router.bias",
"router.e_score_correction_bias"),
"experts.gate", "experts.up", "experts.down" (+ "experts.gate_bias", ...), and with shared
experts "shared.gate.weight", "shared.up.weight", "shared.down.weight" (+ "shared_gate.weight").
"""
from __future__ import annotations

import numpy as np

from minimoe.config import Config
from minimoe.inspect import tracing
from minimoe.kernels import moe as moe_kernels
from minimoe.nn import ffn, linear, router
from minimoe.nn.ffn import sigmoid


def expert_weights(p: dict, e: int) -> dict:
    """Expert e's own arrays: gate (F, C), up (F, C), down (C, F) and its biases, if any."""
    w = {"w_gate": p["experts.gate"][e], "w_up": p["experts.up"][e], "w_down": p["experts.down"][e]}
    if "experts.gate_bias" in p:
        w.update(b_gate=p["experts.gate_bias"][e], b_up=p["experts.up_bias"][e],
                 b_down=p["experts.down_bias"][e])
    return w


def _act(cfg: Config) -> dict:
    return dict(act=cfg.ffn_act, limit=cfg.swiglu_limit, alpha=cfg.swiglu_alpha)


def forward_loop(x: np.ndarray, p: dict, cfg: Config):
    """The reference form. x (B, T, C) -> (y (B, T, C), routing stats)."""
    B, T, C = x.shape
    xf = x.reshape(B * T, C)                             # (N, C)
    weights, experts, stats, _ = router.forward(xf, p["router.weight"], p.get("router.bias"), cfg,
                                                p.get("router.e_score_correction_bias"))
    y = np.zeros_like(xf)                                # (N, C)
    for e in range(cfg.n_experts):
        tokens, slot = np.where(experts == e)            # the tokens that chose expert e, and in which slot
        if len(tokens) == 0:
            continue
        out, _ = ffn.forward(xf[tokens], **expert_weights(p, e), **_act(cfg),
                             name=f"moe.experts.{e}")    # (n_e, C) -> (n_e, C)
        y[tokens] += weights[tokens, slot, None] * out   # (n_e, 1) * (n_e, C)
    y = y + _shared_forward(xf, p, cfg)[0]
    stats.update(experts=experts, weights=weights)
    return y.reshape(B, T, C), stats


def forward(x: np.ndarray, p: dict, cfg: Config):
    """The dispatch/combine form. x (B, T, C) -> (y (B, T, C), cache, routing stats)."""
    B, T, C = x.shape
    N, K, E = B * T, cfg.top_k, cfg.n_experts
    xf = x.reshape(N, C)                                 # (N, C)
    weights, experts, stats, router_cache = router.forward(
        xf, p["router.weight"], p.get("router.bias"), cfg,
        p.get("router.e_score_correction_bias"))         # (N, K), (N, K)

    # dispatch: group the A = N*K assignments by expert
    tr = tracing.ACTIVE                                  # None unless inside `with minimoe.trace()`
    t0 = tr.clock() if tr else 0.0
    # order (A,): the assignments a = n*K + k sorted by expert (a stable counting sort);
    # offsets (E+1,): expert e owns [offsets[e], offsets[e+1]). Kernels: minimoe/kernels/moe.py
    order, offsets = moe_kernels.dispatch(experts, E)
    token = order // K                                   # (A,) the token of each sorted assignment
    counts = stats["tokens_per_expert"]                  # (E,)
    xs = moe_kernels.gather(xf, order, K)                # (N, C)[(A,)] -> (A, C) gathered inputs
    ys = np.empty_like(xs)                               # (A, C)
    if tr:
        tr.elementwise("moe.experts.dispatch", "dispatch", 0, (xf,), (xs,), N, t0)
    expert_caches = {}
    for e in np.flatnonzero(counts):                     # only the experts that got tokens
        seg = slice(offsets[e], offsets[e + 1])
        ys[seg], expert_caches[e] = ffn.forward(xs[seg], **expert_weights(p, e), **_act(cfg),
                                                name=f"moe.experts.{e}")

    # combine: undo the sort, then weight and sum each token's K outputs
    t0 = tr.clock() if tr else 0.0
    y = moe_kernels.combine(ys, order, weights)          # (A, C) -> (N, C): y[n] = sum_k weights[n, k] ys[(n, k)]
    if tr:
        tr.elementwise("moe.experts.combine", "combine", 2 * K, (ys, weights), (y,), N, t0)

    shared, shared_cache = _shared_forward(xf, p, cfg)
    y = y + shared
    stats.update(experts=experts, weights=weights)
    cache = dict(router=router_cache, order=order, token=token, offsets=offsets,
                 expert_caches=expert_caches, ys=ys, weights=weights,
                 shared=shared_cache, shape=(B, T, C), K=K, E=E)
    return y.reshape(B, T, C), cache, stats


def _shared_forward(xf: np.ndarray, p: dict, cfg: Config):
    """The shared experts, which every token uses: xf (N, C) -> ((N, C), cache)."""
    if "shared.gate.weight" not in p:
        return 0.0, None
    ys, fcache = ffn.forward(xf, p["shared.gate.weight"], p["shared.up.weight"],
                             p["shared.down.weight"], **_act(cfg), name="moe.shared")  # (N, C)
    if "shared_gate.weight" not in p:
        return ys, (fcache, None, None, ys)
    z, zlin = linear.forward(xf, p["shared_gate.weight"], name="moe.shared_gate")  # (N, C) -> (N, 1)
    s = sigmoid(z)                                                  # (N, 1)
    return s * ys, (fcache, zlin, s, ys)


def backward(dy: np.ndarray, cache, dprobs: np.ndarray | None = None,
             dlogits_extra: np.ndarray | None = None):
    """dy (B, T, C) -> (dx (B, T, C), grads of this layer's MoE parameters).

    The gradient of each expert's output flows only to the experts that token used; the
    router receives the gradient of the K weights (the selection itself is held fixed).
    dprobs/dlogits_extra: extra router gradients from the auxiliary losses, see router.backward.
    """
    B, T, C = cache["shape"]
    N, K, E = B * T, cache["K"], cache["E"]
    dyf = dy.reshape(N, C)
    weights, ys, order, offsets = cache["weights"], cache["ys"], cache["order"], cache["offsets"]
    grads = {}

    # y[n] = sum_k w[n,k] ys[(n,k)]: dweights (N, K) = ys . dy, and dys (A, C) = w dy, sorted by expert
    dweights, dys = moe_kernels.combine_backward(dyf, ys, order, weights)
    dxs = np.zeros_like(dys)                             # (A, C)
    for e, ecache in cache["expert_caches"].items():
        seg = slice(offsets[e], offsets[e + 1])
        dxs[seg], g = ffn.backward(dys[seg], ecache)
        for name, arr in g.items():
            key = "experts." + name
            if key not in grads:
                grads[key] = np.zeros((E,) + arr.shape, dtype=arr.dtype)
            grads[key][e] = arr
    dx = moe_kernels.combine(dxs, order, np.ones((N, K), dxs.dtype))  # (N, C) scatter back: sum each token's K

    dxr, grads["router.weight"], db = router.backward(dweights, cache["router"], dprobs, dlogits_extra)
    if db is not None:
        grads["router.bias"] = db
    dx = dx + dxr

    if cache["shared"] is not None:
        fcache, zlin, s, ys = cache["shared"]
        if zlin is not None:                             # y_shared = s * ys, s = sigmoid(z)
            dz = (dyf * ys).sum(axis=-1, keepdims=True) * s * (1 - s)  # (N, 1)
            dxz, grads["shared_gate.weight"], _ = linear.backward(dz, zlin)
            dx = dx + dxz
            dyf = dyf * s
        dxs_, g = ffn.backward(dyf, fcache)
        dx = dx + dxs_
        grads.update({f"shared.{k}.weight": v for k, v in g.items()})
    return dx.reshape(B, T, C), grads
