"""DeepSeek's routing (minimoe/nn/router.py): group-limited top-k, V3's selection-only correction
bias, sigmoid scores and the routed scaling factor. A hand-computed case, and float64 finite
differences through the router and the whole MoE layer with the selection held fixed."""
import numpy as np
import pytest

from minimoe import Config, ConfigError
from minimoe.model import init_params, sub_params
from minimoe.nn import moe, router
from minimoe.train.gradcheck import assert_gradients

F64 = np.float64


def test_group_limited_top_k_by_hand():
    # 8 experts in 4 groups of 2; keep 2 groups; pick 3 experts
    choice = np.array([[0.9, 0.0,   0.5, 0.45,   0.8, 0.1,   0.6, 0.6]])
    # V3 ranks groups by the sum of their two best: 0.9, 0.95, 0.9, 1.2 -> groups 3 and 1
    assert sorted(router.group_limited_top_k(choice, 3, 4, 2, "top2_sum")[0]) == [2, 6, 7]
    # V2 ranks groups by their best: 0.9, 0.5, 0.8, 0.6 -> groups 0 and 2
    assert sorted(router.group_limited_top_k(choice, 3, 4, 2, "max")[0]) == [0, 4, 5]
    # one group: plain top-k
    assert sorted(router.group_limited_top_k(choice, 3, 1, 1, "top2_sum")[0]) == [0, 4, 6]


def test_correction_bias_chooses_but_does_not_weigh():
    cfg = Config(d_model=4, n_heads=2, n_experts=4, top_k=2, router="sigmoid_topk", router_renorm=False,
                 router_correction_bias=True, router_scale=2.5)
    x = np.eye(4)[:1]                                    # logits = w[:, 0]
    w = np.array([[2.0, 0, 0, 0], [1.0, 0, 0, 0], [0.0, 0, 0, 0], [-1.0, 0, 0, 0]])
    bias = np.array([0.0, 0.0, 0.9, 0.0])                # lifts expert 2 above expert 1
    weights, experts, _, _ = router.forward(x, w, None, cfg, bias)
    assert sorted(experts[0]) == [0, 2]
    s = 1 / (1 + np.exp(-np.array([2.0, 0.0])))          # sigmoid of the chosen logits, no bias
    np.testing.assert_allclose(sorted(weights[0]), sorted(2.5 * s))
    _, experts, _, _ = router.forward(x, w, None, cfg)   # without it: experts 0 and 1
    assert sorted(experts[0]) == [0, 1]


CASES = {
    "v3-sigmoid-groups-bias": dict(router="sigmoid_topk", router_renorm=True, router_scale=2.5,
                                   router_groups=4, router_topk_groups=2, router_correction_bias=True),
    "v3-no-renorm": dict(router="sigmoid_topk", router_renorm=False, router_groups=2, router_topk_groups=1,
                         router_correction_bias=True),
    "v2-softmax-groups": dict(router="softmax_topk", router_renorm=False, router_scale=16.0, router_groups=4,
                              router_topk_groups=3),
}


@pytest.mark.parametrize("name", list(CASES))
def test_router_gradients(name):
    E, C, N, K = 8, 6, 9, 3
    cfg = Config(d_model=C, n_heads=2, n_experts=E, top_k=K, **CASES[name])
    rng = np.random.default_rng(7)
    x, w = rng.normal(size=(N, C)), rng.normal(size=(E, C))
    bias = rng.normal(0, 0.3, E) if cfg.router_correction_bias else None
    Rw, Rp, Rl = rng.normal(size=(N, K)), rng.normal(size=(N, E)), rng.normal(size=(N, E))
    _, experts0, _, cache = router.forward(x, w, None, cfg, bias)
    if bias is not None:                                 # the bias changes the choice somewhere
        assert not np.array_equal(router.forward(x, w, None, cfg)[1], experts0)

    def f():
        wts, ex, st, _ = router.forward(x, w, None, cfg, bias)
        assert np.array_equal(ex, experts0), "a perturbation changed the top-k selection"
        return float(np.sum(wts * Rw) + np.sum(st["probs"] * Rp) + np.sum(st["logits"] * Rl))

    dx, dw, _ = router.backward(Rw, cache, dprobs=Rp, dlogits_extra=Rl)
    assert_gradients(f, {"x": x, "w": w}, {"x": dx, "w": dw})


@pytest.mark.parametrize("name", list(CASES))
def test_moe_layer_gradients(name):
    cfg = Config(vocab_size=11, d_model=8, n_layers=1, n_heads=2, d_ff=6, n_experts=8, top_k=3, d_expert=6,
                 n_shared_experts=2, d_shared_expert=4, **CASES[name])
    rng = np.random.default_rng(8)
    p = {k: v + rng.normal(0, 0.5, v.shape) for k, v in
         sub_params(init_params(cfg, seed=2, dtype=F64), "layers.0.moe.").items()}
    bias_name = "router.e_score_correction_bias"
    learned = {k: v for k, v in p.items() if k != bias_name}   # the bias is a buffer: no gradient
    x, R = rng.normal(size=(2, 5, cfg.d_model)), rng.normal(size=(2, 5, cfg.d_model))
    _, cache, stats0 = moe.forward(x, p, cfg)
    np.testing.assert_allclose(moe.forward_loop(x, p, cfg)[0], moe.forward(x, p, cfg)[0], atol=1e-12)

    def f():
        y, _, st = moe.forward(x, p, cfg)
        assert np.array_equal(st["experts"], stats0["experts"]), "a perturbation changed the selection"
        return float(np.sum(y * R))

    dx, g = moe.backward(R, cache)
    assert bias_name not in g
    grads = {k: g.get(k, np.zeros_like(v)) for k, v in learned.items()}
    assert_gradients(f, {"x": x, **learned}, {"x": dx, **grads})


def test_group_options_are_checked():
    base = dict(d_model=8, n_heads=2, n_experts=8, top_k=2, router="sigmoid_topk")
    with pytest.raises(ConfigError, match="router_groups=3 must divide n_experts=8"):
        Config(**base, router_groups=3)
    with pytest.raises(ConfigError, match="top_k=5 is more than the 1 chosen groups of 4"):
        Config(**{**base, "top_k": 5}, router_groups=2, router_topk_groups=1)
    with pytest.raises(ConfigError, match="router_correction_bias is DeepSeek-V3's"):
        Config(**{**base, "router": "softmax_topk"}, router_correction_bias=True)
