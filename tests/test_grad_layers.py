"""Finite-difference checks (float64, relative error < 1e-6) of every layer's backward pass.

Each test builds a scalar loss L = sum(out * R) with a fixed random R, so dL/dout = R, runs the
layer's backward on R and compares every gradient with minimoe.train.gradcheck's five-point
directional derivative. Layers with a hard choice (the router's top-k, gpt-oss's clamps) also
check that the perturbations never cross it, or the finite difference would be meaningless.
"""
import numpy as np
import pytest

from minimoe.config import Config
from minimoe.nn import attention, embedding, ffn, linear, loss, moe, norm, rope, router
from minimoe.train.gradcheck import assert_gradients

TOL = 1e-6
F64 = np.float64


def rand(rng, *shape, scale=1.0):
    return rng.normal(0.0, scale, size=shape).astype(F64)


def test_embedding():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 7, size=(2, 5))
    w = rand(rng, 7, 3)
    R = rand(rng, 2, 5, 3)
    out, cache = embedding.forward(tokens, w)
    dw = embedding.backward(R, cache)
    assert_gradients(lambda: float(np.sum(embedding.forward(tokens, w)[0] * R)), {"weight": w}, {"weight": dw})


def test_rmsnorm():
    rng = np.random.default_rng(1)
    x, w, R = rand(rng, 2, 3, 8), rand(rng, 8), rand(rng, 2, 3, 8)
    f = lambda: float(np.sum(norm.forward(x, w, 1e-5)[0] * R))
    _, cache = norm.forward(x, w, 1e-5)
    dx, dw = norm.backward(R, cache)
    assert_gradients(f, {"x": x, "weight": w}, {"x": dx, "weight": dw})


@pytest.mark.parametrize("scaling", [None, {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4}])
def test_rope(scaling):
    rng = np.random.default_rng(2)
    T, D = 5, 8
    cos, sin = rope.cos_sin(np.arange(T), D, 10000.0, scaling, dtype=F64)
    x, R = rand(rng, 2, 3, T, D), rand(rng, 2, 3, T, D)
    _, cache = rope.forward(x, cos, sin)
    dx = rope.backward(R, cache)
    assert_gradients(lambda: float(np.sum(rope.forward(x, cos, sin)[0] * R)), {"x": x}, {"x": dx})


@pytest.mark.parametrize("bias", [False, True])
def test_linear(bias):
    rng = np.random.default_rng(3)
    x, w, R = rand(rng, 2, 3, 5), rand(rng, 4, 5), rand(rng, 2, 3, 4)
    b = rand(rng, 4) if bias else None
    f = lambda: float(np.sum(linear.forward(x, w, b)[0] * R))
    _, cache = linear.forward(x, w, b)
    dx, dw, db = linear.backward(R, cache)
    arrays, grads = {"x": x, "w": w}, {"x": dx, "w": dw}
    if bias:
        arrays["b"], grads["b"] = b, db
    assert_gradients(f, arrays, grads)


def test_cross_entropy():
    rng = np.random.default_rng(4)
    logits, targets = rand(rng, 2, 5, 7, scale=2.0), rng.integers(0, 7, size=(2, 5))
    _, cache = loss.forward(logits, targets)
    d = loss.backward(1.0, cache)
    assert_gradients(lambda: loss.forward(logits, targets)[0], {"logits": logits}, {"logits": d})


@pytest.mark.parametrize("act,biases", [("swiglu", False), ("swiglu", True), ("swiglu_oai", True)])
def test_swiglu_ffn(act, biases):
    rng = np.random.default_rng(5)
    C, F = 6, 10
    x, R = rand(rng, 3, 4, C), rand(rng, 3, 4, C)
    w = {"w_gate": rand(rng, F, C), "w_up": rand(rng, F, C), "w_down": rand(rng, C, F)}
    if biases:
        w.update(b_gate=rand(rng, F), b_up=rand(rng, F), b_down=rand(rng, C))
    # limit 1.5 with O(1) pre-activations: many clamp, so both sides of each clamp are checked
    act_kw = dict(act=act, limit=1.5, alpha=1.702)
    _, cache = ffn.forward(x, **w, **act_kw)

    def clamps(c):                                       # which entries sit on each side of the kinks
        a, u = c[2][0], c[2][1]
        return a > 1.5, np.abs(u) > 1.5

    if act == "swiglu_oai":
        a_clamped, u_clamped = clamps(cache)
        assert a_clamped.any() and u_clamped.any(), "the clamps should be active somewhere"
        assert not a_clamped.all() and not u_clamped.all()

    def f():
        y, c = ffn.forward(x, **w, **act_kw)
        if act == "swiglu_oai":
            assert all(np.array_equal(m, m0) for m, m0 in zip(clamps(c), clamps(cache))), \
                "a perturbation crossed a clamp"
        return float(np.sum(y * R))

    dx, g = ffn.backward(R, cache)
    names = {"w_gate": "gate", "w_up": "up", "w_down": "down", "b_gate": "gate_bias",
             "b_up": "up_bias", "b_down": "down_bias"}
    arrays = {"x": x, **w}
    grads = {"x": dx, **{k: g[names[k]] for k in w}}
    assert_gradients(f, arrays, grads)


ATTN_CONFIGS = {
    "mha": dict(),
    "gqa": dict(n_kv_heads=2),
    "gqa-one-kv-head": dict(n_kv_heads=1),
    "biases-sinks-window": dict(n_kv_heads=2, qkv_bias=True, o_bias=True, attn_sinks=True, sliding_window=3),
    "qk-norm-head": dict(n_kv_heads=2, qk_norm="head"),
    "qk-norm-full": dict(n_kv_heads=2, qk_norm="full"),
}


@pytest.mark.parametrize("name", list(ATTN_CONFIGS))
def test_attention(name):
    cfg = Config(vocab_size=11, d_model=16, n_layers=1, n_heads=4, d_ff=8, max_seq_len=16,
                 **ATTN_CONFIGS[name])
    rng = np.random.default_rng(6)
    from minimoe.model import init_params, sub_params
    p = {k: v.astype(F64) for k, v in sub_params(init_params(cfg, seed=1, dtype=F64), "layers.0.attn.").items()}
    for k in p:                                          # make every parameter matter
        p[k] = p[k] + rand(rng, *p[k].shape, scale=0.3)
    B, T = 2, 6
    cos, sin = rope.cos_sin(np.arange(T), cfg.head_dim, cfg.rope_theta, dtype=F64)
    x, R = rand(rng, B, T, cfg.d_model), rand(rng, B, T, cfg.d_model)
    f = lambda: float(np.sum(attention.forward(x, p, cfg, 0, cos, sin)[0] * R))
    _, cache = attention.forward(x, p, cfg, 0, cos, sin)
    dx, g = attention.backward(R, cache)
    assert set(g) == set(p), f"gradients for {sorted(g)}, parameters {sorted(p)}"
    assert_gradients(f, {"x": x, **p}, {"x": dx, **g})


ROUTER_CASES = [
    ("softmax_topk", True, False, 1.0),
    ("softmax_topk", False, True, 1.0),
    ("topk_softmax", True, True, 1.0),
    ("sigmoid_topk", True, False, 2.5),
    ("sigmoid_topk", False, True, 1.0),
]


@pytest.mark.parametrize("rule,renorm,bias,scale", ROUTER_CASES)
@pytest.mark.parametrize("K", [1, 2, 4])
def test_router(rule, renorm, bias, scale, K):
    """The K gate weights, plus extra gradients on probs (aux loss) and on logits (z-loss)."""
    E, C, N = 4, 6, 9
    cfg = Config(d_model=C, n_heads=2, n_experts=E, top_k=K, router=rule, router_renorm=renorm,
                 router_bias=bias, router_scale=scale)
    rng = np.random.default_rng(7)
    x, w = rand(rng, N, C), rand(rng, E, C)
    b = rand(rng, E) if bias else None
    arrays = {"x": x, "router.weight": w, **({"router.bias": b} if bias else {})}
    check_router(lambda: router.forward(x, w, b, cfg), arrays, rng, K)


def check_router(route, arrays: dict, rng, K: int):
    """Finite-difference check of router.backward for a routing call `route()` -> (weights (N, K),
    selection, stats, cache, ...) that reads `arrays` ("x" and parameters by their short names),
    with the loss sum(weights R_w) + sum(probs R_p) + sum(logits R_l): the gate weights, plus the
    extra gradients the aux loss (on probs) and the z-loss (on logits) send."""
    weights, selection0, stats, cache = route()[:4]
    N, E = stats["probs"].shape
    Rw, Rp, Rl = rand(rng, N, K), rand(rng, N, E), rand(rng, N, E)

    def f():
        wts, selection, st = route()[:3]
        assert np.array_equal(selection, selection0), "a perturbation changed the selection"
        return float(np.sum(wts * Rw) + np.sum(st["probs"] * Rp) + np.sum(st["logits"] * Rl))

    dx, g = router.backward(Rw, cache, dprobs=Rp, dlogits_extra=Rl)
    assert_gradients(f, arrays, {"x": dx, **{k: g[k] for k in arrays if k != "x"}})


MOE_CASES = {
    "top1": dict(top_k=1),
    "top2": dict(top_k=2),
    "topE": dict(top_k=4),
    "top2-no-renorm": dict(top_k=2, router_renorm=False),
    "topk_softmax-bias-oai": dict(top_k=2, router="topk_softmax", router_bias=True, expert_bias=True,
                                  ffn_act="swiglu_oai", swiglu_limit=3.0),
    "sigmoid-scale": dict(top_k=2, router="sigmoid_topk", router_scale=2.5),
    "shared-gated": dict(top_k=2, n_shared_experts=1, shared_expert_gate=True, router_renorm=False),
    "shared-ungated": dict(top_k=1, n_shared_experts=2, d_shared_expert=3),
}


@pytest.mark.parametrize("name", list(MOE_CASES))
def test_moe(name):
    cfg = Config(vocab_size=11, d_model=8, n_layers=1, n_heads=2, d_ff=6, n_experts=4, d_expert=6,
                 **MOE_CASES[name])
    from minimoe.model import init_params, sub_params
    rng = np.random.default_rng(8)
    p = sub_params(init_params(cfg, seed=2, dtype=F64), "layers.0.moe.")
    for k in p:
        p[k] = p[k] + rand(rng, *p[k].shape, scale=0.5)
    x, R = rand(rng, 2, 5, cfg.d_model), rand(rng, 2, 5, cfg.d_model)
    _, cache, stats0 = moe.forward(x, p, cfg)
    experts0 = stats0["experts"]

    def f():
        y, _, st = moe.forward(x, p, cfg)
        assert np.array_equal(st["experts"], experts0), "a perturbation changed the top-k selection"
        return float(np.sum(y * R))

    dx, g = moe.backward(R, cache)
    # an expert that got no token has no gradient entry of its own: it is zero
    grads = {k: g.get(k, np.zeros_like(v)) for k, v in p.items()}
    assert set(g) <= set(p)
    assert_gradients(f, {"x": x, **p}, {"x": dx, **grads})


def test_moe_backward_touches_only_used_experts():
    """An expert that no token chose gets exactly zero gradient."""
    cfg = Config(vocab_size=11, d_model=8, n_layers=1, n_heads=2, d_ff=6, n_experts=4, top_k=1, d_expert=6)
    from minimoe.model import init_params, sub_params
    p = sub_params(init_params(cfg, seed=0, dtype=F64), "layers.0.moe.")
    p["router.weight"][:] = 0
    p["router.weight"][2, 0] = 5.0                       # tokens with x[0] > 0 pick expert 2
    x = np.abs(np.random.default_rng(0).normal(size=(1, 6, 8)))
    _, cache, stats = moe.forward(x, p, cfg)
    assert (stats["experts"] == 2).all()
    _, g = moe.backward(np.ones_like(x), cache)
    for name in ("experts.gate", "experts.up", "experts.down"):
        assert np.abs(g[name][2]).sum() > 0
        assert np.all(g[name][[0, 1, 3]] == 0), name


def test_gradcheck_catches_a_small_error():
    """The checker is sharp: a gradient off by one part in 10^5 fails."""
    rng = np.random.default_rng(9)
    x, w, R = rand(rng, 4, 5), rand(rng, 3, 5), rand(rng, 4, 3)
    _, cache = linear.forward(x, w)
    dx, dw, _ = linear.backward(R, cache)
    f = lambda: float(np.sum(linear.forward(x, w)[0] * R))
    assert_gradients(f, {"x": x, "w": w}, {"x": dx, "w": dw})
    with pytest.raises(AssertionError, match="w: 1.0"):
        assert_gradients(f, {"x": x, "w": w}, {"x": dx, "w": dw * (1 + 1e-5)})
