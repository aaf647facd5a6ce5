"""Multi-head latent attention (minimoe/nn/mla.py): float64 finite differences of the naive form's
backward, the absorbed form against the naive one, the latent KV cache against the full forward,
and the rotary pair order and softmax scale by hand."""
import numpy as np
import pytest

from minimoe import Config, Model
from minimoe.model import init_params, sub_params
from minimoe.nn import mla, rope
from minimoe.nn.latent_kv_cache import LatentKVCache
from minimoe.train.gradcheck import assert_gradients

F64 = np.float64
YARN = {"type": "yarn", "factor": 4.0, "mscale": 0.707, "mscale_all_dim": 0.707,
        "original_max_position_embeddings": 8, "beta_fast": 32, "beta_slow": 1}

MLA_CASES = {
    "low-rank-q": dict(q_lora_rank=12),
    "full-q-interleaved": dict(q_lora_rank=0, rope_interleave=True),
    "low-rank-q-interleaved-yarn-obias": dict(q_lora_rank=12, rope_interleave=True, rope_scaling=YARN,
                                              o_bias=True),
}


def mla_config(**extra) -> Config:
    return Config(vocab_size=11, d_model=16, n_layers=1, n_heads=3, head_dim=10, d_ff=8, max_seq_len=16,
                  attention="mla", kv_lora_rank=6, qk_rope_head_dim=4, qk_nope_head_dim=6, v_head_dim=5,
                  **extra)


def mla_params(cfg, seed=1, dtype=F64):
    rng = np.random.default_rng(seed)
    p = {k: v.astype(dtype) for k, v in sub_params(init_params(cfg, seed=seed, dtype=dtype), "layers.0.attn.").items()}
    for k in p:                                          # make every parameter matter
        p[k] = p[k] + rng.normal(0, 0.3, p[k].shape).astype(dtype)
    return p


def rope_tables(cfg, T, start=0, dtype=F64):
    return rope.cos_sin(np.arange(start, start + T), cfg.rope_dim, cfg.rope_theta, cfg.rope_scaling, dtype=dtype)


@pytest.mark.parametrize("name", list(MLA_CASES))
def test_mla_gradients(name):
    cfg = mla_config(**MLA_CASES[name])
    p = mla_params(cfg)
    rng = np.random.default_rng(6)
    B, T = 2, 5
    cos, sin = rope_tables(cfg, T)
    x, R = rng.normal(size=(B, T, cfg.d_model)), rng.normal(size=(B, T, cfg.d_model))
    f = lambda: float(np.sum(mla.forward(x, p, cfg, 0, cos, sin)[0] * R))
    _, cache = mla.forward(x, p, cfg, 0, cos, sin)
    dx, g = mla.backward(R, cache)
    assert set(g) == set(p), f"gradients for {sorted(g)}, parameters {sorted(p)}"
    assert_gradients(f, {"x": x, **p}, {"x": dx, **g})


@pytest.mark.parametrize("name", list(MLA_CASES))
def test_absorbed_form_equals_naive(name):
    """Folding Wkv_b into the query and output gives the same attention, with and without a cache."""
    cfg = mla_config(**MLA_CASES[name])
    p = mla_params(cfg)
    x = np.random.default_rng(2).normal(size=(2, 7, cfg.d_model))
    cos, sin = rope_tables(cfg, 7)
    naive, _ = mla.forward(x, p, cfg, 0, cos, sin)
    absorbed, _ = mla.forward(x, p, cfg, 0, cos, sin, absorb=True)
    np.testing.assert_allclose(absorbed, naive, rtol=1e-12, atol=1e-12)
    # the absorbed form over a latent cache, one token at a time
    kv = LatentKVCache.empty(1, 2, 8, cfg.kv_lora_rank, cfg.qk_rope_head_dim, F64)
    steps = []
    for t in range(7):
        y, _ = mla.forward(x[:, t:t + 1], p, cfg, 0, cos[t:t + 1], sin[t:t + 1], kv, absorb=True)
        kv.advance(1)
        steps.append(y)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), naive, rtol=1e-12, atol=1e-12)


def test_the_absorbed_form_never_builds_per_head_keys():
    """What decoding reads: the (S, Rkv + Dr) latents, not H heads of keys and values."""
    cfg = mla_config(q_lora_rank=12)
    p = mla_params(cfg)
    kv = LatentKVCache.empty(1, 1, 8, cfg.kv_lora_rank, cfg.qk_rope_head_dim, F64)
    cos, sin = rope_tables(cfg, 3)
    _, cache = mla.forward(np.ones((1, 3, cfg.d_model)), p, cfg, 0, cos, sin, kv, absorb=True)
    assert "k_nope" not in cache and "v" not in cache
    kv.advance(3)
    assert kv.nbytes == 3 * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 8


def test_interleaved_pairs_rotate_like_deepseek():
    """rope_interleave: pair (x_2i, x_2i+1) turns by angle pos * inv_freq[i], as DeepSeek's complex form."""
    D, pos = 6, 3
    x = np.random.default_rng(0).normal(size=(1, 1, D))
    cos, sin = rope.cos_sin(np.array([pos]), D, 10000.0, dtype=F64)
    y, _ = rope.forward(mla.deinterleave(x), cos, sin)
    z = x[..., 0::2] + 1j * x[..., 1::2]                 # (x0 + i x1), (x2 + i x3), ...
    freq = 1.0 / 10000.0 ** (np.arange(0, D, 2) / D)
    rotated = z * np.exp(1j * pos * freq)
    np.testing.assert_allclose(mla.interleave(y)[..., 0::2], rotated.real, atol=1e-12)
    np.testing.assert_allclose(mla.interleave(y)[..., 1::2], rotated.imag, atol=1e-12)
    np.testing.assert_array_equal(mla.interleave(mla.deinterleave(x)), x)


def test_softmax_scale_by_hand():
    assert mla.softmax_scale(mla_config()) == pytest.approx(10 ** -0.5)
    m = 0.1 * 0.707 * np.log(4.0) + 1.0                  # YaRN mscale with mscale_all_dim = 0.707
    assert mla.softmax_scale(mla_config(rope_scaling=YARN)) == pytest.approx(10 ** -0.5 * m * m)


def test_mla_model_decodes_from_the_latent_cache_like_the_full_forward():
    cfg = mla_config(q_lora_rank=12, rope_interleave=True, rope_scaling=YARN).replace(n_layers=2)
    model = Model(cfg, seed=0)
    rng = np.random.default_rng(1)
    for v in model.params.values():
        v += rng.normal(0, 0.3, v.shape).astype(v.dtype)
    tokens = rng.integers(0, cfg.vocab_size, (2, 9))
    full = model(tokens)
    kv = model.new_kv_cache(2, 12)
    assert isinstance(kv, LatentKVCache)
    outs = [model.forward(tokens[:, :3], kv)[0]]
    outs += [model.forward(tokens[:, t:t + 1], kv)[0] for t in range(3, 9)]
    np.testing.assert_allclose(np.concatenate(outs, axis=1), full, atol=2e-5)


def test_the_model_runs_mla_but_refuses_what_only_the_estimator_counts():
    import minimoe
    from minimoe.errors import MinimoeError
    Model(minimoe.Config.preset("tiny-deepseek").replace(n_mtp_layers=1), seed=0)   # MTP layers: skipped
    with pytest.raises(MinimoeError, match="does not run linear_layers="):
        Model(minimoe.Config.preset("qwen3-next-80b-a3b"))    # refused before any weight is allocated


def test_the_trace_counts_latent_attention_with_its_value_width():
    """Naive form: scores over Dq = Dn + Dr channels, P.v over Dv; the absorbed decode step: scores
    over Rkv + Dr, P.c over Rkv, read from the latent cache."""
    import minimoe
    cfg = minimoe.Config.preset("tiny-deepseek")
    model = Model(cfg, seed=0)
    H, Dq, Dv, R = cfg.n_heads, cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
    T = 5
    with minimoe.trace() as t:
        model(np.arange(T))
    ops = t.ops
    assert ops["layers.0.attn.scores"]["flops"] == 2 * H * T * T * Dq
    assert ops["layers.0.attn.pv"]["flops"] == 2 * H * T * T * Dv
    kv = model.new_kv_cache(1, T + 1)
    model.forward(np.arange(T)[None], kv)
    with minimoe.trace() as t:
        model.forward(np.array([[7]]), kv)
    S = T + 1
    assert t.ops["layers.0.attn.scores"]["flops"] == 2 * H * S * (R + cfg.qk_rope_head_dim)
    assert t.ops["layers.0.attn.pv"]["flops"] == 2 * H * S * R
    assert t.ops["layers.0.attn.scores"]["kv_cache_bytes"] == S * (R + cfg.qk_rope_head_dim) * 4


def test_the_latent_cache_holds_what_the_estimator_counts():
    import minimoe
    from minimoe.inspect.estimate import kv_cache_bytes
    cfg = minimoe.Config.preset("tiny-deepseek")
    model = Model(cfg, seed=0)
    kv = model.new_kv_cache(2, 16)
    model.forward(np.tile(np.arange(11), (2, 1)), kv)
    assert kv.nbytes == kv_cache_bytes(cfg, 11, batch=2, kv_dtype="fp32")
    assert kv.nbytes == 2 * 11 * cfg.n_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 4
