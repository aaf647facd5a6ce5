"""One decode step, fused: the forward pass of ONE new token per sequence, with a KV cache.

Shape legend: B batch, C d_model, H heads, G kv heads, D head dim, F expert width, E experts,
K top-k, V vocab, L KV-cache capacity.

This computes exactly what Model.forward computes for tokens of shape (B, 1) (tests check it),
in the order llama2.c's `forward(token, pos)` does, with no time axis:

    x = embed[token]                                          (B, C)
    for each layer:
        h = rmsnorm(x);  q, k, v = h Wq, h Wk, h Wv           (B, H*D), (B, G*D), (B, G*D)
        y = attend(q, k, v, cache, pos)                       rotary, cache write, softmax . v
        x = x + y Wo
        h = rmsnorm(x)
        weights, experts = route(h Wr)                        (B, K) each
        x = x + sum_k weights[:, k] * Expert_{experts[:, k]}(h)   one GEMV call per projection
                                                                  for all B*K (token, expert) rows
    logits = rmsnorm(x) Whead                                 (B, V)

Why a separate path: the general forward handles any T with (B, T, ...) arrays, masks and sorts,
which is right for prefill and training. For T = 1 those are a few hundred small NumPy calls per
token, and once the weights are 4-bit they cost more than the matmuls. Here each step is one
kernel call (minimoe/kernels/ops.py, qmatmul.py), and the weights are looked up once per model.

Model.forward takes this path when it is given a KV cache and one position, and the config has
nothing this file does not implement (`unsupported(model)` says what; those models keep the
general path). It returns the routing of each layer (experts, weights) but no backward cache:
there is no backward pass through a KV cache.
"""
from __future__ import annotations

import weakref

import numpy as np

from minimoe.kernels.ops import ROUTERS, attend, rms_norm, route_topk
from minimoe.kernels.packed import PACKED_FORMATS, KernelInputError, pack
from minimoe.kernels.qmatmul import fmatmul, qmatmul
from minimoe.nn.ffn import glu_forward


def unsupported(model) -> str | None:
    """Why this model cannot take the fused decode path, or None if it can."""
    cfg = model.config
    if model.params["embed.weight"].dtype != np.float32:
        return f"the model is {model.params['embed.weight'].dtype}, the kernels are float32"
    if cfg.n_experts and cfg.router not in ROUTERS:
        return f"router {cfg.router!r}"
    if cfg.attention != "gqa":
        return f"attention {cfg.attention!r}"
    if cfg.n_experts and cfg.router_groups > 1:
        return "group-limited routing"
    if cfg.ffn_act != "swiglu":
        return f"ffn_act {cfg.ffn_act!r}"
    if getattr(cfg, "expert_bias", False):
        return "expert biases"
    for name, w in model.params.items():
        if not isinstance(w, np.ndarray) and getattr(w, "fmt", None) not in PACKED_FORMATS:
            return f"{name} is {getattr(w, 'fmt', type(w).__name__)}, which has no fused kernel"
        if isinstance(w, np.ndarray) and (w.dtype != np.float32 or not w.flags.c_contiguous):
            return f"{name} is {w.dtype}{'' if w.flags.c_contiguous else ', not C-contiguous'}"
    if not isinstance(model.params["embed.weight"], np.ndarray):
        return "a packed embedding table"
    return None


# ----------------------------------------------------------------------------------------------
# The weights of each layer, looked up once per model (and again after model.refresh())
# ----------------------------------------------------------------------------------------------

_prepared: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _w(w):
    """A float array as it is, a QTensor as its PackedWeight (repacked once, cached)."""
    return w if isinstance(w, np.ndarray) or w is None else pack(w)


def prepare(model):
    """(reason, layers, head): why the fused path cannot run (None if it can); per layer the arrays
    the decode step reads, packed weights in the kernels' layout; the output head. Cached per model
    until model.refresh() rebuilds its layer list."""
    hit = _prepared.get(model)
    if hit is not None and hit[0] is model._layers:
        return hit[1]
    reason = unsupported(model)
    layers, head = None, None
    if reason is None:
        layers = []
        for lp in model._layers:
            a, m = lp["attn"], lp["moe"]
            layer = {k: _w(a.get(k)) for k in ("q.weight", "k.weight", "v.weight", "o.weight")}
            layer.update({k: a.get(k) for k in ("q.bias", "k.bias", "v.bias", "o.bias", "q_norm.weight",
                                                 "k_norm.weight", "sinks")})
            layer["attn_norm"], layer["ffn_norm"] = lp["attn_norm"], lp["ffn_norm"]
            layer["moe"] = {k: _w(v) for k, v in m.items()} if m else None
            layer["ffn"] = {k: _w(v) for k, v in lp["ffn"].items()} if lp["ffn"] else None
            layers.append(layer)
        head = _w(model.head)
    _prepared[model] = (model._layers, (reason, layers, head))
    return _prepared[model][1]


def available(model) -> bool:
    """True when Model.forward may hand a one-position step with a KV cache to forward_token."""
    return prepare(model)[0] is None


def _mm(x: np.ndarray, w) -> np.ndarray:
    """x (R, I) @ w.T for a float (O, I) array or a PackedWeight -> (R, O)."""
    return fmatmul(x, w) if isinstance(w, np.ndarray) else qmatmul(x, w)


def _mm_experts(x: np.ndarray, w, experts: np.ndarray) -> np.ndarray:
    """Row r of x times matrix experts[r] of the stack w (E, O, I): x (R, I) -> (R, O),
    one GEMV call for all rows."""
    return fmatmul(x, w, experts) if isinstance(w, np.ndarray) else qmatmul(x, w, experts)


# ----------------------------------------------------------------------------------------------
# The step
# ----------------------------------------------------------------------------------------------

def forward_token(model, tokens: np.ndarray, kv) -> tuple[np.ndarray, list]:
    """tokens (B,) at position kv.length -> (logits (B, V), routing per layer), advancing kv by one."""
    cfg = model.config
    reason, layers, head = prepare(model)
    if reason is not None:
        raise KernelInputError(f"the fused decode step does not support this model: {reason}")
    B = tokens.shape[0]
    H, G, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    pos = kv.length
    cos, sin = model._rope(pos, 1)                                 # (1, D) each
    x = model.params["embed.weight"][tokens]                       # (B, C)
    routing = []
    for i, p in enumerate(layers):
        # --- attention -----------------------------------------------------------------------
        h = rms_norm(x, p["attn_norm"], cfg.norm_eps)              # (B, C)
        q, k, v = _mm(h, p["q.weight"]), _mm(h, p["k.weight"]), _mm(h, p["v.weight"])  # (B, H*D), (B, G*D) x2
        if p["q.bias"] is not None:
            q, k, v = q + p["q.bias"], k + p["k.bias"], v + p["v.bias"]
        if cfg.qk_norm == "full":                                  # OLMoE: over the whole projection
            q, k = rms_norm(q, p["q_norm.weight"], cfg.norm_eps), rms_norm(k, p["k_norm.weight"], cfg.norm_eps)
        q, k, v = q.reshape(B, H, D), k.reshape(B, G, D), v.reshape(B, G, D)
        if cfg.qk_norm == "head":                                  # Qwen3: per head
            q, k = rms_norm(q, p["q_norm.weight"], cfg.norm_eps), rms_norm(k, p["k_norm.weight"], cfg.norm_eps)
        y = attend(q, k, v, cos[0], sin[0], kv.k[i], kv.v[i], pos, cfg.window(i), p["sinks"])  # (B, H, D)
        o = _mm(y.reshape(B, H * D), p["o.weight"])                # (B, C)
        x = x + (o if p["o.bias"] is None else o + p["o.bias"])
        # --- feed-forward: routed experts, or a dense SwiGLU ------------------------------------
        h = rms_norm(x, p["ffn_norm"], cfg.norm_eps)               # (B, C)
        if p["moe"] is not None:
            f, stats = _moe_step(h, p["moe"], cfg)
        else:
            f, stats = _swiglu(h, p["ffn"]["gate.weight"], p["ffn"]["up.weight"], p["ffn"]["down.weight"]), None
        x = x + f
        routing.append(stats)
    kv.advance(1)
    h = rms_norm(x, model.params["norm.weight"], cfg.norm_eps)     # (B, C)
    return _mm(h, head), routing                                   # (B, V)


def silu_mul(a: np.ndarray, u: np.ndarray) -> np.ndarray:
    """silu(a) * u (R, F), with the layer's own NumPy code (faster than a compiled loop here)."""
    return glu_forward(a, u)[0]


def _swiglu(h, w_gate, w_up, w_down):
    """A dense SwiGLU FFN: h (R, C) -> (R, C)."""
    return _mm(silu_mul(_mm(h, w_gate), _mm(h, w_up)), w_down)


def _moe_step(h: np.ndarray, p: dict, cfg):
    """h (B, C) -> (y (B, C), {"experts": (B, K), "weights": (B, K)})."""
    B, C = h.shape
    K = cfg.top_k
    logits = _mm(h, p["router.weight"])                            # (B, C) @ (C, E) -> (B, E)
    if "router.bias" in p:
        logits = logits + p["router.bias"]
    weights, experts = route_topk(logits, K, cfg.router, cfg.router_renorm, cfg.router_scale)  # (B, K)
    rows = np.repeat(h, K, axis=0)                                 # (B*K, C): row b*K + k is token b
    ex = experts.reshape(B * K)                                    # (B*K,)
    a = _mm_experts(rows, p["experts.gate"], ex)                   # (B*K, F)
    u = _mm_experts(rows, p["experts.up"], ex)                     # (B*K, F)
    ys = _mm_experts(silu_mul(a, u), p["experts.down"], ex)        # (B*K, F) -> (B*K, C)
    y = np.einsum("bk,bkc->bc", weights, ys.reshape(B, K, C))      # (B, K) . (B, K, C) -> (B, C)
    if "shared.gate.weight" in p:                                  # shared experts: every token
        s = _swiglu(h, p["shared.gate.weight"], p["shared.up.weight"], p["shared.down.weight"])
        if "shared_gate.weight" in p:
            s = s * (0.5 * (1.0 + np.tanh(0.5 * _mm(h, p["shared_gate.weight"]))))  # sigmoid gate (B, 1)
        y = y + s
    return y, {"experts": experts, "weights": weights}
