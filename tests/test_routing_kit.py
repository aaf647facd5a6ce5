"""The routing research kit (issue 18): capacity and token dropping, DeepSeek-V3's loss-free bias and
sequence-wise balance loss, expert choice and noisy top-k.

Oracles: float64 finite differences (minimoe.train.gradcheck) for every new backward; the expert
loop (moe.forward_loop, which masks dropped assignments one expert at a time) for the buffered
dispatch; hand-computed cases for the capacity rule and the bias update.
"""
import numpy as np
import pytest

from minimoe.config import Config, ConfigError
from minimoe.model import Model, init_params, sub_params
from minimoe.nn import capacity, moe, router
from minimoe.train import balance, losses
from minimoe.train.gradcheck import assert_gradients
from test_grad_layers import check_router

F64 = np.float64


def rand(rng, *shape, scale=1.0):
    return rng.normal(0.0, scale, size=shape).astype(F64)


def moe_params(cfg, seed=2, jitter=0.5):
    rng = np.random.default_rng(seed + 100)
    p = sub_params(init_params(cfg, seed=seed, dtype=F64), "layers.0.moe.")
    for k in p:
        p[k] = p[k] + rand(rng, *p[k].shape, scale=jitter)
    return p


def small(**kw):
    base = dict(vocab_size=11, d_model=8, n_layers=1, n_heads=2, d_ff=6, n_experts=4, d_expert=6, top_k=2)
    return Config(**{**base, **kw})


# --- gradient checks ---------------------------------------------------------------------------------

def test_noisy_topk_router_gradients():
    """H = x W + eps * softplus(x W_noise); topk_softmax on H. Gradients reach x, W and W_noise."""
    E, C, N, K = 4, 6, 9, 2
    cfg = Config(d_model=C, n_heads=2, n_experts=E, top_k=K, router="noisy_topk")
    rng = np.random.default_rng(3)
    x, w, wn, eps = rand(rng, N, C), rand(rng, E, C), rand(rng, E, C), rand(rng, N, E)
    check_router(lambda: router.forward(x, w, None, cfg, None, wn, eps),
                 {"x": x, "router.weight": w, "router.noise.weight": wn}, rng, K)


def test_noisy_topk_without_noise_is_topk_softmax():
    cfg = small(router="noisy_topk")
    rng = np.random.default_rng(0)
    x, w = rand(rng, 7, 8), rand(rng, 4, 8)
    a = router.forward(x, w, None, cfg)[:2]
    b = router.forward(x, w, None, cfg.replace(router="topk_softmax"))[:2]
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("bias", [False, True])
def test_expert_choice_router_gradients(bias):
    """Each expert takes its 3 best tokens of each sequence of 5; weights = probs where taken."""
    E, C, T, G = 4, 6, 5, 2
    cfg = Config(d_model=C, n_heads=2, n_experts=E, top_k=2, router="expert_choice", router_bias=bias)
    rng = np.random.default_rng(4)
    x, w = rand(rng, G * T, C), rand(rng, E, C)
    b = rand(rng, E) if bias else None

    def route():
        weights, chosen, slots, stats, cache = router.expert_choice_forward(x, w, b, cfg, T, 3)
        return weights, chosen, stats, cache

    check_router(route, {"x": x, "router.weight": w, **({"router.bias": b} if bias else {})}, rng, E)


MOE_CASES = {
    "capacity-score": dict(capacity_factor=0.6),
    "capacity-position": dict(capacity_factor=0.6, drop_policy="position"),
    "capacity-top1-no-renorm": dict(capacity_factor=0.8, top_k=1, router_renorm=False),
    "capacity-sigmoid-bias": dict(capacity_factor=0.7, router="sigmoid_topk", router_correction_bias=True),
    "capacity-shared": dict(capacity_factor=0.6, n_shared_experts=1, router_renorm=False),
    "expert-choice": dict(router="expert_choice"),
    "expert-choice-cf0.5": dict(router="expert_choice", capacity_factor=0.5),
    "noisy-topk": dict(router="noisy_topk"),
    "noisy-topk-capacity": dict(router="noisy_topk", capacity_factor=0.7),
    "correction-bias": dict(router_correction_bias=True),
    "deepseek-groups-capacity": dict(router="sigmoid_topk", router_correction_bias=True, n_experts=8,
                                     router_groups=4, router_topk_groups=2, capacity_factor=0.7),
}


@pytest.mark.parametrize("name", list(MOE_CASES))
def test_moe_training_paths_gradients(name):
    """The whole MoE layer in training mode (buffers, dropping, noise), by finite differences."""
    cfg = small(**MOE_CASES[name])
    p = moe_params(cfg)
    rng = np.random.default_rng(8)
    x, R = rand(rng, 2, 5, cfg.d_model), rand(rng, 2, 5, cfg.d_model)
    eps = rand(rng, 2, 5, cfg.n_experts)                     # noisy top-k's draws, fixed
    _, cache, st0 = moe.forward(x, p, cfg, "train", eps)

    def f():
        y, _, st = moe.forward(x, p, cfg, "train", eps)
        assert np.array_equal(st["experts"], st0["experts"]), "a perturbation changed the selection"
        assert np.array_equal(st.get("kept"), st0.get("kept")), "a perturbation changed what was dropped"
        return float(np.sum(y * R))

    dx, g = moe.backward(R, cache)
    grads = {k: g.get(k, np.zeros_like(v)) for k, v in p.items()}
    assert set(g) <= set(p)
    learned = {k: v for k, v in p.items() if k != "router.e_score_correction_bias"}
    assert "router.e_score_correction_bias" not in g      # a buffer: no gradient
    assert_gradients(f, {"x": x, **learned}, {"x": dx, **{k: grads[k] for k in learned}})
    if "capacity" in name:
        assert st0["dropped_assignments"] > 0, "the case should drop something"


@pytest.mark.parametrize("name", list(MOE_CASES))
@pytest.mark.parametrize("mode", ["train", "eval", "generate"])
def test_buffered_dispatch_equals_the_expert_loop(name, mode):
    cfg = small(**MOE_CASES[name], eval_capacity_factor=MOE_CASES[name].get("capacity_factor", 0.0))
    p = moe_params(cfg, seed=3)
    x = rand(np.random.default_rng(1), 3, 6, cfg.d_model)
    eps = rand(np.random.default_rng(2), 3, 6, cfg.n_experts)
    y, _, st = moe.forward(x, p, cfg, mode, eps)
    y_loop, st_loop = moe.forward_loop(x, p, cfg, mode, eps)
    np.testing.assert_allclose(y, y_loop, rtol=1e-12, atol=1e-12)
    assert np.array_equal(st["experts"], st_loop["experts"])


# --- capacity and dropping -------------------------------------------------------------------------

def test_capacity_rule():
    assert capacity.capacity(T=64, K=2, E=8, factor=1.0) == 16
    assert capacity.capacity(T=64, K=2, E=8, factor=1.25) == 20
    assert capacity.capacity(T=1, K=2, E=8, factor=1.0) == 1        # decode: one row, never dropped
    assert capacity.capacity(T=4, K=2, E=2, factor=3.0) == 4        # never more rows than tokens


def test_dispatch_capacity_by_hand():
    """One sequence of 4 tokens, top-1 over 2 experts, room for 1 row each. All four tokens want
    expert 0; by score the most probable keeps it, by position the first does."""
    experts = np.array([[0], [0], [0], [1]])
    priority = np.array([[0.6], [0.9], [0.7], [0.8]])
    slots, kept = capacity.dispatch_capacity(experts, priority, E=2, T=4, cap=1, policy="score")
    assert slots.tolist() == [[[1]], [[3]]] and kept.ravel().tolist() == [False, True, False, True]
    slots, kept = capacity.dispatch_capacity(experts, priority, E=2, T=4, cap=1, policy="position")
    assert slots.tolist() == [[[0]], [[3]]] and kept.ravel().tolist() == [True, False, False, True]
    # padding: room for 2 rows, expert 1 fills one of them
    slots, kept = capacity.dispatch_capacity(experts, priority, E=2, T=4, cap=2, policy="score")
    assert slots.tolist() == [[[1, 2]], [[3, -1]]]


def test_position_policy_serves_first_choices_first():
    """GShard's order: every token's first choice before any second choice."""
    experts = np.array([[1, 0], [0, 1]])                 # token 0 wants 1 then 0; token 1 wants 0 then 1
    slots, kept = capacity.dispatch_capacity(experts, np.ones((2, 2)), E=2, T=2, cap=1, policy="position")
    assert kept.tolist() == [[True, False], [True, False]]


def test_a_token_with_every_choice_dropped_passes_through_the_residual():
    cfg = small(top_k=1, capacity_factor=0.25, eval_capacity_factor=0.25, router_renorm=False)
    p = moe_params(cfg)
    p["router.weight"][:] = 0
    p["router.weight"][2, 0] = 5.0                       # every token with x[0] > 0 wants expert 2
    x = np.abs(rand(np.random.default_rng(0), 1, 8, 8))
    y, _, st = moe.forward(x, p, cfg, "eval")
    # capacity ceil(0.25 * 8 * 1 / 4) = 1: expert 2 runs one token, the other 7 get y = 0
    assert st["kept"].sum() == 1 and st["dropped_tokens"] == pytest.approx(7 / 8)
    dropped = ~st["kept"][:, 0]
    assert np.all(y.reshape(8, -1)[dropped] == 0) and np.any(y.reshape(8, -1)[~dropped] != 0)
    # through the model: the layer adds nothing for those tokens, x + 0


def test_trace_counts_padded_capacity_flops():
    """With a capacity factor every expert runs its whole buffer (E * G * capacity rows), filled
    or not; the trace counts those rows."""
    import minimoe
    cfg = Config.preset("tiny-moe").replace(eval_capacity_factor=1.5, vocab_size=32)
    model = Model(cfg, seed=0)
    tokens = np.random.default_rng(0).integers(0, 32, size=(3, 10))
    with minimoe.trace() as t:
        model(tokens)
    cap = capacity.capacity(10, cfg.top_k, cfg.n_experts, 1.5)           # 8 rows per sequence
    rows = cfg.n_experts * 3 * cap
    expert_flops = sum(r["flops"] for r in t.ops.values() if r["expert"] is not None and r["layer"] == 0)
    C, F = cfg.d_model, cfg.d_expert
    assert expert_flops == 2 * rows * 3 * C * F                           # gate, up, down
    assert rows > 3 * 10 * cfg.top_k                                      # more than the assignments


# --- DeepSeek-V3's loss-free balancing --------------------------------------------------------------

@pytest.mark.parametrize("rule", ["softmax_topk", "sigmoid_topk"])
def test_correction_bias_changes_which_experts_run_not_their_weights(rule):
    cfg = small(router=rule, router_correction_bias=True, n_experts=6)
    p = moe_params(cfg, jitter=0.3)
    x = rand(np.random.default_rng(0), 2, 10, cfg.d_model)
    p["router.e_score_correction_bias"][:] = 0
    _, _, plain = moe.forward(x, p, cfg)
    p["router.e_score_correction_bias"][:] = [0.3, 0, 0, 0, 0, -0.3]
    _, _, biased = moe.forward(x, p, cfg)
    assert not np.array_equal(plain["experts"], biased["experts"]), "the bias should change the choice"
    assert (biased["experts"] == 0).sum() > (plain["experts"] == 0).sum()
    assert (biased["experts"] == 5).sum() < (plain["experts"] == 5).sum()
    # the weights come from the unbiased scores of whichever experts were chosen
    rows = np.arange(20)[:, None]
    s = plain["probs"] if rule == "softmax_topk" else 1 / (1 + np.exp(-plain["logits"]))
    g = s[rows, biased["experts"]]                                        # (N, K) unbiased scores
    np.testing.assert_allclose(biased["weights"], g / g.sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_array_equal(biased["probs"], plain["probs"])
    # where the choice did not change, neither did the weights (compared expert by expert)
    def dense(st):                                                        # (N, E) weight of each expert
        w = np.zeros((20, cfg.n_experts))
        w[rows, st["experts"]] = st["weights"]
        return w
    same = np.all(np.sort(plain["experts"], 1) == np.sort(biased["experts"], 1), axis=1)
    assert same.any() and not same.all()
    np.testing.assert_array_equal(dense(biased)[same], dense(plain)[same])


def test_bias_update_rule_by_hand():
    bias = np.zeros(4, np.float32)
    step = balance.update_bias(bias, np.array([10, 2, 4, 4]), gamma=0.01)   # mean 5
    np.testing.assert_array_equal(step, np.float32([-0.01, 0.01, 0.01, 0.01]))
    np.testing.assert_array_equal(bias, step)
    balance.update_bias(bias, np.array([5, 5, 5, 5]), gamma=0.01)           # even: no change
    np.testing.assert_array_equal(bias, step)


def test_correction_bias_is_a_buffer():
    from minimoe.params import count_params, is_buffer, param_shapes
    cfg = small(router_correction_bias=True)
    assert "layers.0.moe.router.e_score_correction_bias" in param_shapes(cfg)
    assert is_buffer("layers.0.moe.router.e_score_correction_bias")
    assert count_params(cfg)["total"] == count_params(small())["total"]


def test_correction_bias_needs_a_score_router():
    with pytest.raises(ConfigError, match="router_correction_bias"):
        small(router="topk_softmax", router_correction_bias=True)


def test_sequence_balance_loss_gradient_and_even_value():
    rng = np.random.default_rng(0)
    N, E, K, T = 12, 4, 2, 4
    probs = rng.dirichlet(np.ones(E), size=N)
    experts = np.argsort(-probs, axis=1)[:, :K]
    routing = [{"probs": probs, "experts": experts}, None]
    loss, grads = losses.load_balancing_loss(routing, 0.3, "sequence", seq_len=T)
    f = lambda: losses.load_balancing_loss(routing, 1.0, "sequence", seq_len=T)[0] * 0.3
    assert_gradients(f, {"probs": probs}, {"probs": grads[0]})
    # even routing: every sequence gives each expert T*K/E tokens and probability 1/E -> 1
    even = {"probs": np.full((8, 4), 0.25), "experts": np.array([[0, 1], [2, 3]] * 4)}
    assert losses.load_balancing_loss([even], 1.0, "sequence", seq_len=4)[0] == pytest.approx(1.0)


def test_loss_free_training_moves_the_bias_and_saves_it(tmp_path):
    import minimoe
    from minimoe.train.loop import TrainConfig, Trainer
    tc = TrainConfig(preset="tiny-moe", batch_size=4, block_size=16, eval_iters=2, sample_tokens=0,
                     max_iters=20, eval_interval=10, ckpt_interval=0, aux_loss_coef=0.0,
                     bias_update_rate=0.01, out=str(tmp_path / "run"), threads=1)
    t = Trainer.new(tc, verbose=False)
    assert t.model.config.router_correction_bias
    t.run()
    b = t.model.params["layers.0.moe.router.e_score_correction_bias"]
    assert np.abs(b).max() > 0 and np.allclose(np.abs(b) * 100, np.round(np.abs(b) * 100), atol=1e-4)
    saved = minimoe.load(str(tmp_path / "run"))
    np.testing.assert_array_equal(saved.params["layers.0.moe.router.e_score_correction_bias"], b)
    import json
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["history"][-1]["correction_bias"][0] == pytest.approx(b.tolist(), abs=1e-5)


def test_sharded_training_step_with_noise_and_capacity_matches_one_shard(tmp_path):
    """The routing noise is drawn for the whole batch and split by rows, and capacity is per
    sequence, so one step in 1 or 2 shards computes the same gradient (up to float32 order)."""
    from minimoe.train.loop import TrainConfig, Trainer
    x = y = None
    grads = {}
    for threads in (1, 2):
        tc = TrainConfig(preset="tiny-moe", batch_size=4, block_size=16, eval_iters=1, sample_tokens=0,
                         max_iters=1, eval_interval=0, ckpt_interval=0, threads=threads,
                         model={"router": "noisy_topk", "capacity_factor": 0.8},
                         out=str(tmp_path / f"t{threads}"))
        t = Trainer.new(tc, verbose=False)
        if x is None:
            x, y = t.data.batch("train", 4, 16, np.random.default_rng(0))
        t.data.batch = lambda *a: (x, y)
        t.opt.step = lambda g, lr, threads=threads: grads.__setitem__(threads, {k: v.copy() for k, v in g.items()})
        t.train_step()
        t.shards.close()
    assert grads[1]["layers.0.moe.router.noise.weight"].any()
    for name in grads[1]:
        np.testing.assert_allclose(grads[2][name], grads[1][name], rtol=1e-4, atol=1e-7, err_msg=name)


# --- generation with the new routers -----------------------------------------------------------------

@pytest.mark.parametrize("name", list(MOE_CASES))
def test_every_routing_option_generates(name):
    model = Model(small(**MOE_CASES[name], eval_capacity_factor=MOE_CASES[name].get("capacity_factor", 0.0)),
                  seed=0)
    out = model.generate(np.array([1, 2, 3]), 5, temperature=0.8, seed=0)
    assert out.shape == (8,)


def test_expert_choice_generates_as_token_choice_over_the_same_router():
    """Under a KV cache (one token at a time) expert choice reads its router as top-K of the
    softmax, unnormalised: exactly a softmax_topk model without renormalisation."""
    ec = Model(small(router="expert_choice"), seed=1)
    tc = Model(small(router="softmax_topk", router_renorm=False), seed=1, params=ec.params)
    tokens = np.array([[1, 5, 2, 7, 3]])
    a, _ = ec.forward(tokens, ec.new_kv_cache(1, 8))
    b, _ = tc.forward(tokens, tc.new_kv_cache(1, 8))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(ec(tokens), a)            # without a cache the experts choose: different


def test_noisy_topk_is_noisy_only_in_training():
    model = Model(small(router="noisy_topk"), seed=0)
    x = np.array([[1, 2, 3, 4]])
    clean = model.forward(x)[0]
    np.testing.assert_array_equal(clean, model.forward(x)[0])
    noise = moe.draw_noise(model.config, 1, 4, np.random.default_rng(0))
    np.testing.assert_array_equal(model.forward(x, train=True, noise=noise)[0],
                                  model.forward(x, train=True, noise=noise)[0])
    assert not np.allclose(model.forward(x, train=True, noise=noise)[0], clean)


def test_resume_is_bit_exact_with_noise_capacity_and_the_loss_free_bias(tmp_path):
    """The routing noise is a function of (seed, step) and the bias is saved with the model, so
    20 steps straight equal 10, a resume, and 10 more."""
    from minimoe.train.loop import TrainConfig, Trainer
    kw = dict(preset="tiny-moe", batch_size=4, block_size=16, eval_iters=1, sample_tokens=0, threads=1,
              eval_interval=0, ckpt_interval=0, lr_decay_iters=20, bias_update_rate=0.01,
              model={"router": "softmax_topk", "capacity_factor": 0.9})
    noisy = dict(kw, model={"router": "noisy_topk", "capacity_factor": 0.9}, bias_update_rate=0.0)
    for settings in (kw, noisy):
        straight = Trainer.new(TrainConfig(max_iters=20, out=str(tmp_path / "a"), **settings), verbose=False)
        straight.run()
        half = Trainer.new(TrainConfig(max_iters=10, out=str(tmp_path / "b"), **settings), verbose=False)
        half.run()
        resumed = Trainer.resume(str(tmp_path / "b"), verbose=False, max_iters=20)
        resumed.run()
        for name, arr in straight.model.params.items():
            np.testing.assert_array_equal(resumed.model.params[name], arr, err_msg=name)
