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
    contiguous, gather them, run every chosen expert at once (each on its own rows, through the
    stacked weights: minimoe/nn/linear.py's `experts`), then undo the sort and sum the K weighted
    outputs per token. It is the form the model, the training backward and the kernels use, and
    it is tested equal to the loop.

`p` holds one layer's MoE parameters by short name: "router.weight" (+ "router.bias",
"router.e_score_correction_bias"),
"experts.gate", "experts.up", "experts.down" (+ "experts.gate_bias", ...), and with shared
experts "shared.gate.weight", "shared.up.weight", "shared.down.weight" (+ "shared_gate.weight").
"""
from __future__ import annotations

import numpy as np

from minimoe.config import Config
from minimoe.kernels.dispatch import Leaf, all_float32
from minimoe.nn import ffn, linear, router
from minimoe.nn.ffn import sigmoid


def expert_weights(p: dict, e: int) -> dict:
    """Expert e's own arrays: gate (F, C), up (F, C), down (C, F) and its biases, if any."""
    w = {"w_gate": p["experts.gate"][e], "w_up": p["experts.up"][e], "w_down": p["experts.down"][e]}
    if "experts.gate_bias" in p:
        w.update(b_gate=p["experts.gate_bias"][e], b_up=p["experts.up_bias"][e],
                 b_down=p["experts.down_bias"][e])
    return w


def all_expert_weights(p: dict) -> dict:
    """The stacks of every expert: gate (E, F, C), up (E, F, C), down (E, C, F), biases if any."""
    w = {"w_gate": p["experts.gate"], "w_up": p["experts.up"], "w_down": p["experts.down"]}
    if "experts.gate_bias" in p:
        w.update(b_gate=p["experts.gate_bias"], b_up=p["experts.up_bias"], b_down=p["experts.down_bias"])
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


# ----------------------------------------------------------------------------------------------
# Dispatch and combine. Assignment a = n*K + k is "token n's k-th choice"; `order` lists the
# A = N*K assignments sorted by expert. The compiled kernels of the same names and signatures are
# in minimoe/kernels/moe.py.
# ----------------------------------------------------------------------------------------------

def dispatch(experts: np.ndarray, E: int):
    """experts (N, K) -> (order (A,), offsets (E+1,)): expert e owns sorted positions
    offsets[e] .. offsets[e+1]. Stable: within an expert, assignments keep token order."""
    flat = experts.ravel()                               # (A,) the expert of each assignment
    order = np.argsort(flat, kind="stable")              # (A,) sorted by expert
    offsets = np.zeros(E + 1, np.int64)
    offsets[1:] = np.cumsum(np.bincount(flat, minlength=E))  # (E,) running totals
    return order, offsets


def gather(x: np.ndarray, order: np.ndarray, K: int) -> np.ndarray:
    """xs[i] = x[order[i] // K]: x (N, C) -> xs (A, C), each token's row once per choice."""
    return x[order // K]


def combine(ys: np.ndarray, order: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """y[n] = sum_k weights[n, k] * ys[where n*K + k was sorted to]: ys (A, C) -> y (N, C)."""
    N, K = weights.shape
    y_assign = np.empty_like(ys)                         # (A, C) back in (token, slot) order
    y_assign[order] = ys
    return np.einsum("nk,nkc->nc", weights, y_assign.reshape(N, K, -1))  # (N, K).(N, K, C) -> (N, C)


def combine_backward(dy: np.ndarray, ys: np.ndarray, order: np.ndarray, weights: np.ndarray):
    """dy (N, C) -> (dweights (N, K) = ys . dy per assignment, dys (A, C) = weight * dy, sorted)."""
    N, K = weights.shape
    y_assign = np.empty_like(ys)
    y_assign[order] = ys
    dweights = np.einsum("nkc,nc->nk", y_assign.reshape(N, K, -1), dy)     # (N, K)
    dy_assign = (weights[:, :, None] * dy[:, None, :]).reshape(N * K, -1)   # (A, C)
    return dweights, dy_assign[order]                                       # sorted by expert again


DISPATCH = Leaf("dispatch", dispatch, "minimoe.kernels.moe:dispatch", when=lambda experts, E: True)
GATHER = Leaf("gather", gather, "minimoe.kernels.moe:gather")
COMBINE = Leaf("combine", combine, "minimoe.kernels.moe:combine")
COMBINE_BACKWARD = Leaf(None, combine_backward, "minimoe.kernels.moe:combine_backward",
                        when=lambda dy, ys, order, weights: all_float32(dy, ys, weights))


def forward(x: np.ndarray, p: dict, cfg: Config):
    """The dispatch/combine form. x (B, T, C) -> (y (B, T, C), cache, routing stats)."""
    B, T, C = x.shape
    N, K, E = B * T, cfg.top_k, cfg.n_experts
    xf = x.reshape(N, C)                                 # (N, C)
    weights, experts, stats, router_cache = router.forward(
        xf, p["router.weight"], p.get("router.bias"), cfg,
        p.get("router.e_score_correction_bias"))         # (N, K), (N, K)
    # dispatch: group the A = N*K assignments by expert, so each expert's rows are contiguous
    order, offsets = DISPATCH(experts, E)                # (A,), (E+1,)
    counts = stats["tokens_per_expert"]                  # (E,)
    xs = GATHER(xf, order, K, name="moe.experts.dispatch")  # (N, C)[(A,)] -> (A, C) gathered inputs
    ex = np.repeat(np.arange(E), counts)                 # (A,) the expert of each sorted row
    # every chosen expert's SwiGLU at once: row a of xs runs through expert ex[a]
    ys, expert_cache = ffn.forward(xs, **all_expert_weights(p), **_act(cfg), experts=ex,
                                   name="moe.experts")   # (A, C) -> (A, C)
    # combine: undo the sort, then weight and sum each token's K outputs
    y = COMBINE(ys, order, weights, name="moe.experts.combine")  # (A, C) -> (N, C)
    shared, shared_cache = _shared_forward(xf, p, cfg)
    y = y + shared
    stats.update(experts=experts, weights=weights)
    cache = dict(router=router_cache, order=order, offsets=offsets, expert_cache=expert_cache,
                 ys=ys, weights=weights, shared=shared_cache, shape=(B, T, C), K=K, E=E)
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
    dweights, dys = COMBINE_BACKWARD(dyf, ys, order, weights)  # (N, K), (A, C)
    dxs, g = ffn.backward(dys, cache["expert_cache"])   # (A, C); stacks (E, F, C), (E, C, F)
    grads.update({"experts." + name: arr for name, arr in g.items()})
    dx = COMBINE(dxs, order, np.ones((N, K), dxs.dtype))  # (N, C) scatter back: sum each token's K
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
