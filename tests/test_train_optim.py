"""AdamW, clipping and the schedule against independent references: nanoGPT's get_lr written out,
a float64 textbook AdamW (Loshchilov & Hutter, Algorithm 2), and torch.optim.AdamW when torch is
installed."""
import math

import numpy as np
import pytest

from minimoe.train.optim import AdamW, clip_by_global_norm, decays, global_norm, lr_at


def nanogpt_get_lr(it, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=2000):
    """nanoGPT train.py get_lr, verbatim apart from the arguments."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


@pytest.mark.parametrize("it", [0, 1, 50, 99, 100, 101, 1000, 1999, 2000, 2001, 5000])
def test_schedule_is_nanogpts(it):
    assert lr_at(it, 1e-3, 1e-4, 100, 2000) == nanogpt_get_lr(it)


def test_schedule_shape():
    assert lr_at(0, 1e-3, 1e-4, 0, 100) == 1e-3                 # no warmup: starts at the peak
    assert lr_at(100, 1e-3, 1e-4, 0, 100) == pytest.approx(1e-4)  # ends at min_lr
    assert lr_at(50, 1e-3, 1e-4, 0, 100) == pytest.approx(5.5e-4)  # cosine midpoint


def textbook_adamw(p, grads, lr, b1, b2, eps, wd, decay):
    """Float64, one parameter, written from the paper's algorithm (with torch's eps placement)."""
    p = p.astype(np.float64).copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        if decay:
            p = p - lr * wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def test_adamw_matches_textbook():
    rng = np.random.default_rng(0)
    params = {"layers.0.attn.q.weight": rng.normal(size=(6, 5)).astype(np.float32),
              "layers.0.attn_norm.weight": rng.normal(size=(5,)).astype(np.float32)}
    start = {k: v.copy() for k, v in params.items()}
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in range(5)]
    opt = AdamW(params, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    for g in grads:
        opt.step(g, lr=1e-2)
    for name in params:
        ref = textbook_adamw(start[name], [g[name] for g in grads], 1e-2, 0.9, 0.99, 1e-8, 0.1,
                             decay=name.endswith("q.weight"))
        np.testing.assert_allclose(params[name], ref, rtol=2e-6, atol=1e-7)


def test_adamw_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    w = rng.normal(size=(7, 3)).astype(np.float32)
    grads = [rng.normal(size=w.shape).astype(np.float32) for _ in range(6)]
    ours = {"layers.0.ffn.up.weight": w.copy()}
    opt = AdamW(ours, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    tw = torch.nn.Parameter(torch.tensor(w))
    topt = torch.optim.AdamW([tw], lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    for lr, g in zip([1e-3, 5e-4, 1e-3, 2e-3, 1e-3, 1e-4], grads):
        for group in topt.param_groups:
            group["lr"] = lr
        tw.grad = torch.tensor(g)
        topt.step()
        opt.step({"layers.0.ffn.up.weight": g}, lr)
    np.testing.assert_allclose(ours["layers.0.ffn.up.weight"], tw.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_weight_decay_rules():
    assert decays("layers.0.attn.q.weight", (4, 4))
    assert decays("layers.0.moe.experts.up", (2, 4, 4))
    assert decays("layers.0.moe.router.weight", (2, 4))
    assert decays("head.weight", (9, 4))
    assert not decays("embed.weight", (9, 4))
    assert decays("embed.weight", (9, 4), decay_embeddings=True)
    assert not decays("layers.0.attn_norm.weight", (4,))
    assert not decays("layers.0.attn.q_norm.weight", (4,))
    assert not decays("norm.weight", (4,))
    assert decays("norm.weight", (4,), decay_norms=True)
    assert not decays("layers.0.attn.q.bias", (4,))
    assert not decays("layers.0.moe.experts.gate_bias", (2, 4))
    assert not decays("layers.0.attn.sinks", (4,))


def test_no_decay_parameter_is_untouched_by_decay():
    """With a zero gradient, only decayed parameters move (AdamW's m and v stay 0)."""
    params = {"layers.0.attn.q.weight": np.ones((2, 2), np.float32), "norm.weight": np.ones(2, np.float32)}
    opt = AdamW(params, weight_decay=0.5)
    opt.step({k: np.zeros_like(v) for k, v in params.items()}, lr=0.1)
    np.testing.assert_allclose(params["layers.0.attn.q.weight"], 0.95)
    np.testing.assert_array_equal(params["norm.weight"], 1.0)


def test_clip_by_global_norm():
    g = {"a": np.array([3.0, 0.0], np.float32), "b": np.array([[4.0]], np.float32)}
    assert global_norm(g) == pytest.approx(5.0)
    norm = clip_by_global_norm(g, 1.0)
    assert norm == pytest.approx(5.0)
    assert global_norm(g) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(g["a"], [0.6, 0.0], rtol=1e-5)
    small = {"a": np.array([0.3], np.float32)}
    clip_by_global_norm(small, 1.0)
    assert small["a"][0] == np.float32(0.3)                       # below the limit: unchanged
    off = {"a": np.array([30.0], np.float32)}
    clip_by_global_norm(off, 0.0)
    assert off["a"][0] == 30.0                                     # 0 turns clipping off


def test_state_round_trip():
    rng = np.random.default_rng(2)
    params = {"w.weight": rng.normal(size=(3, 3)).astype(np.float32)}
    opt = AdamW(params)
    opt.step({"w.weight": rng.normal(size=(3, 3)).astype(np.float32)}, 1e-3)
    other = AdamW({"w.weight": params["w.weight"].copy()})
    other.load_state(opt.state_tensors(), opt.state_info())
    assert other.t == 1
    np.testing.assert_array_equal(other.m["w.weight"], opt.m["w.weight"])
    np.testing.assert_array_equal(other.v["w.weight"], opt.v["w.weight"])
    from minimoe.errors import CheckpointError
    with pytest.raises(CheckpointError, match="missing tensor 'v.w.weight'"):
        other.load_state({"m.w.weight": opt.m["w.weight"]}, opt.state_info())
    with pytest.raises(CheckpointError, match=r"'m.w.weight' has shape \(2, 3\), expected \(3, 3\)"):
        other.load_state({"m.w.weight": np.zeros((2, 3), np.float32), "v.w.weight": opt.v["w.weight"]},
                         opt.state_info())

