import numpy as np
import pytest

import minimoe
from minimoe import Config, Model
from minimoe.nn import ffn, moe

BASE = dict(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, max_seq_len=32)
VARIANTS = {
    "dense": BASE,
    "moe": dict(BASE, n_experts=4, top_k=2, d_expert=24),
    "gpt-oss-like": dict(BASE, n_experts=4, top_k=2, d_expert=24, router="topk_softmax", router_bias=True,
                         expert_bias=True, ffn_act="swiglu_oai", qkv_bias=True, o_bias=True, attn_sinks=True,
                         sliding_window=4, sliding_layers=[0],
                         rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}),
    "qwen-like": dict(BASE, n_experts=4, top_k=2, d_expert=24, n_shared_experts=1, shared_expert_gate=True,
                      router_renorm=False, qk_norm="head", dense_layers=[0]),
    "olmoe-like": dict(BASE, n_experts=6, top_k=3, d_expert=16, qk_norm="full", router_renorm=False,
                       tie_embeddings=True),
    "deepseek-router": dict(BASE, n_experts=4, top_k=2, d_expert=24, router="sigmoid_topk", router_scale=2.5,
                            rope_scaling={"type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8}),
}


def noisy_model(cfg, seed=0):
    """A model whose weights are large enough that every component moves the logits."""
    m = Model(cfg, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for k, v in m.params.items():
        v += rng.normal(0, 0.2, v.shape).astype(v.dtype)
    return m


@pytest.mark.parametrize("name", VARIANTS)
def test_causality(name):
    m = noisy_model(Config(**VARIANTS[name]))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, 12)
    base = m(tokens)
    for t in (0, 5, 11):
        changed = tokens.copy()
        changed[t] = (changed[t] + 1) % 50
        out = m(changed)
        # positions before t cannot see t (up to float rounding: BLAS may block an expert's
        # matmul differently when the set of tokens routed to it changes)
        np.testing.assert_allclose(out[:t], base[:t], atol=1e-5, rtol=0)
        assert not np.allclose(out[t], base[t])            # position t does


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("prompt_len", [1, 3, 8])
def test_kv_cache_decoding_equals_full_forward(name, prompt_len):
    m = noisy_model(Config(**VARIANTS[name]))
    tokens = np.random.default_rng(prompt_len).integers(0, 50, (2, 14))
    full = m(tokens)
    kv = m.new_kv_cache(batch=2)
    steps = [m.forward(tokens[:, :prompt_len], kv)[0]]
    for t in range(prompt_len, 14):
        steps.append(m.forward(tokens[:, t:t + 1], kv)[0])
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5, rtol=0)


def test_topk_equal_to_e_is_the_probability_weighted_sum_of_all_experts():
    cfg = Config(**dict(BASE, n_experts=4, top_k=4, d_expert=24))
    m = noisy_model(cfg)
    p = m.layer_params(0)["moe"]
    x = np.random.default_rng(0).normal(size=(2, 5, 32)).astype(np.float32)
    y, _, stats = moe.forward(x, p, cfg)
    xf = x.reshape(10, 32)
    logits = xf @ p["router.weight"].T
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)                       # (N, E) softmax over all experts
    expected = sum(probs[:, e:e + 1] * ffn.forward(xf, **moe.expert_weights(p, e))[0] for e in range(4))
    np.testing.assert_allclose(y.reshape(10, 32), expected, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in VARIANTS if n != "dense"])
def test_expert_loop_equals_dispatch_form(name):
    cfg = Config(**VARIANTS[name])
    m = noisy_model(cfg)
    layer = 1
    p = m.layer_params(layer)["moe"]
    x = np.random.default_rng(3).normal(size=(3, 7, 32)).astype(np.float32)
    y_loop, s_loop = moe.forward_loop(x, p, cfg)
    y_fast, _, s_fast = moe.forward(x, p, cfg)
    np.testing.assert_allclose(y_fast, y_loop, atol=1e-5)
    np.testing.assert_array_equal(s_fast["tokens_per_expert"], s_loop["tokens_per_expert"])


def test_router_statistics():
    cfg = Config(**VARIANTS["moe"])
    m = noisy_model(cfg)
    tokens = np.arange(20) % 50
    _, cache = m.forward(tokens)
    for stats in cache["routing"]:
        assert stats["tokens_per_expert"].sum() == 20 * cfg.top_k
        np.testing.assert_allclose(stats["prob_mass"].sum(), 20, rtol=1e-5)  # each token's probs sum to 1
        np.testing.assert_array_equal(np.bincount(stats["experts"].ravel(), minlength=4),
                                      stats["tokens_per_expert"])


def test_logits_shape_dtype_and_batch_consistency():
    m = noisy_model(Config(**VARIANTS["moe"]))
    tokens = np.random.default_rng(0).integers(0, 50, (3, 6))
    out = m(tokens)
    assert out.shape == (3, 6, 50) and out.dtype == np.float32
    np.testing.assert_allclose(m(tokens[1]), out[1], atol=1e-5)


def test_greedy_generate_follows_the_argmax_of_full_forwards():
    m = noisy_model(Config(**VARIANTS["gpt-oss-like"]))
    prompt = np.array([3, 1, 4, 1, 5])
    out = m.generate(prompt, 8, temperature=0.0)
    assert out.shape == (13,) and np.array_equal(out[:5], prompt)
    seq = list(prompt)
    for _ in range(8):
        seq.append(int(m(np.array(seq))[-1].argmax()))
    assert list(out) == seq


def test_generate_crops_context_like_nanogpt():
    cfg = Config(**dict(BASE, max_seq_len=6))
    m = noisy_model(cfg)
    out = m.generate(np.array([1, 2, 3]), 7, temperature=0.0)
    seq = [1, 2, 3]
    for _ in range(7):
        seq.append(int(m(np.array(seq[-6:]))[-1].argmax()))  # the last max_seq_len tokens
    assert list(out) == seq


def test_sampling_is_reproducible_and_respects_top_k():
    m = noisy_model(Config(**VARIANTS["moe"]))
    a = m.generate(np.array([1, 2]), 10, temperature=1.0, top_k=3, seed=7)
    b = m.generate(np.array([1, 2]), 10, temperature=1.0, top_k=3, seed=7)
    np.testing.assert_array_equal(a, b)
    seq = list(a[:2])
    for t in a[2:]:
        top3 = np.argsort(m(np.array(seq))[-1])[-3:]
        assert t in top3
        seq.append(int(t))
    c = m.generate(np.array([1, 2]), 10, temperature=1.0, top_p=1e-9, seed=1)
    assert list(c) == list(m.generate(np.array([1, 2]), 10, temperature=0.0))  # top_p -> greedy


def test_bad_tokens_give_clear_errors():
    m = Model(Config(**BASE))
    with pytest.raises(minimoe.MinimoeError, match=r"token ids must be in 0..49"):
        m(np.array([1, 50]))
    with pytest.raises(minimoe.MinimoeError, match="integers"):
        m(np.array([1.0, 2.0]))
    with pytest.raises(minimoe.MinimoeError, match="non-empty"):
        m(np.zeros((0,), dtype=int))


def test_a_breakpoint_on_the_routing_line_is_hit_for_every_generated_token():
    """The student's breakpoint: generate() with a KV cache runs the same nn/ code as a forward
    pass, so the routing line of nn/router.py runs once per MoE layer for the prompt and once per
    MoE layer for every new token, on the default (numba) backend."""
    import inspect
    import sys

    from minimoe.nn import router
    src, first = inspect.getsourcelines(router.forward)
    line = first + next(i for i, text in enumerate(src) if "= SELECT(" in text)
    cfg = Config.preset("tiny-moe")
    model = Model(cfg, seed=0)
    hits = []

    def tracer(frame, event, arg):
        if frame.f_code is router.forward.__code__:
            def local(frame, event, arg):
                if event == "line" and frame.f_lineno == line:
                    hits.append(frame.f_locals["x"].shape[0])      # the tokens routed at this stop
                return local
            return local
        return None

    prompt, new = np.array([3, 1, 4, 1, 5]), 6
    sys.settrace(tracer)
    try:
        out = model.generate(prompt, new)
    finally:
        sys.settrace(None)
    n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.n_layers))
    assert minimoe.get_backend() == "numba" and len(out) == len(prompt) + new
    # the prompt (5 tokens) in each MoE layer, then one token per layer for each of the 5 steps
    # that feed a new token back (the 6th new token is sampled from the 5th step's logits)
    assert hits == [len(prompt)] * n_moe + [1] * (n_moe * (new - 1))


@pytest.mark.parametrize("recipe", ["fp32", "q4_0"])
def test_replacing_a_weight_takes_effect_at_the_next_call(recipe):
    cfg = Config(**VARIANTS["moe"])
    model = noisy_model(cfg)
    if recipe != "fp32":
        model = minimoe.quantize(model, recipe)
    tokens = np.arange(7) % cfg.vocab_size
    before, gen_before = model(tokens), model.generate(tokens, 6)
    rng = np.random.default_rng(5)
    for name in ("layers.1.attn.q.weight", "layers.0.moe.experts.up", "norm.weight"):
        new = rng.normal(0, 0.5, model.params[name].shape).astype(np.float32)
        model.params[name] = new if recipe == "fp32" or name == "norm.weight" else minimoe.quant.quantize(new, recipe)
    after = model(tokens)
    fresh = Model(cfg, params=dict(model.params))                 # the oracle: a model built from these arrays
    np.testing.assert_array_equal(after, fresh(tokens))
    assert np.abs(after - before).max() > 1e-2
    kv = model.new_kv_cache(1)                                     # the decode path reads them too
    model.forward(tokens[:4], kv)
    step = model.forward(tokens[4:5], kv)[0]
    np.testing.assert_allclose(step[0], after[4], rtol=1e-5, atol=1e-5)


def test_last_only_logits_are_the_last_row_of_the_full_logits():
    """forward(last_only=True) (what generate asks of a prompt) equals the last position of the
    full logits, through a KV cache and without one; training refuses it."""
    model = minimoe.Model(minimoe.Config.preset("tiny-moe"), seed=0)
    tokens = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    full, _ = model.forward(tokens, inference=True)
    last, _ = model.forward(tokens, inference=True, last_only=True)
    assert last.shape == (2, 1, model.config.vocab_size)
    np.testing.assert_allclose(last[:, 0], full[:, -1], rtol=1e-6, atol=1e-6)
    kv = model.new_kv_cache(2, 8)
    cached, _ = model.forward(tokens, kv, last_only=True)
    np.testing.assert_allclose(cached, last, rtol=1e-6, atol=1e-6)
    assert kv.length == 5
    with pytest.raises(minimoe.errors.MinimoeError, match="last_only"):
        model.forward(tokens, last_only=True)
