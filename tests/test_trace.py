"""minimoe.trace(): the numbers the ops report, checked against independent arithmetic.

Every expected value below is computed from the config's parameter shapes, the model's own
arrays, or the router's own statistics; none comes from minimoe/inspect.
"""
import json
import math

import numpy as np
import pytest

import minimoe
from minimoe.errors import MinimoeError
from minimoe.inspect import plots, views
from minimoe.params import count_params, param_shapes
from minimoe.quant import QTensor, bits_per_weight
from minimoe.quant.model import RECIPES

# gpt-oss's features on a tiny model: biases everywhere, sinks, a sliding window on layer 0,
# per-head q/k norms, a shared expert with its sigmoid gate, clamped SwiGLU, top-k-then-softmax.
OSS_LIKE = dict(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                n_experts=4, top_k=2, d_expert=32, max_seq_len=64, qkv_bias=True, o_bias=True,
                attn_sinks=True, router="topk_softmax", router_bias=True, expert_bias=True,
                sliding_window=3, sliding_layers=[0], qk_norm="head", n_shared_experts=1,
                shared_expert_gate=True, ffn_act="swiglu_oai")

CONFIGS = {
    "tiny": lambda: minimoe.Config.preset("tiny"),
    "tiny-moe": lambda: minimoe.Config.preset("tiny-moe"),
    "shakespeare-dense": lambda: minimoe.Config.preset("shakespeare-dense"),
    "shakespeare-moe": lambda: minimoe.Config.preset("shakespeare-moe"),
    "oss-like": lambda: minimoe.Config(**OSS_LIKE),
}


def is_vector(name: str) -> bool:
    """Norm scales, biases and sinks: applied elementwise, not multiplied through a matrix."""
    return name.endswith("norm.weight") or name.endswith("bias") or name.endswith("sinks")


def expected_matmul_flops_per_token(cfg) -> int:
    """2 * (active_non_embedding - the active vector parameters)."""
    vec = 0
    for name, shape in param_shapes(cfg).items():
        if is_vector(name):
            n = math.prod(shape)
            vec += n * cfg.top_k // cfg.n_experts if ".moe.experts." in name else n
    return 2 * (count_params(cfg)["active_non_embedding"] - vec)


def expected_attention(cfg, B: int, start: int, T: int) -> tuple[int, int]:
    """(computed, causal) attention FLOPs of one forward pass of T positions after `start` cached:
    the code computes the whole (T, S) block, S = start + T; causally, query t sees
    min(start + t + 1, window) keys. 4 = 2 FLOPs per multiply-add, for q.k and for P.v."""
    H, D, S = cfg.n_heads, cfg.head_dim, start + T
    computed = causal = 0
    for i in range(cfg.n_layers):
        w = cfg.window(i)
        keys = sum(min(start + t + 1, w) if w else start + t + 1 for t in range(T))
        computed += 4 * B * H * D * T * S
        causal += 4 * B * H * D * keys
    return computed, causal


@pytest.fixture
def numpy_backend():
    """The trace reads shapes and bytes, whichever backend multiplies; the NumPy twins spare these
    tests Numba's start-up. test_bytes_on_the_numba_backend runs the default backend."""
    with minimoe.backend("numpy"):
        yield


@pytest.fixture(params=list(CONFIGS))
def model(request):
    return minimoe.Model(CONFIGS[request.param](), seed=1)


def tokens(cfg, *shape, seed=0):
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, size=shape)


# --- FLOPs ----------------------------------------------------------------------------------------
def test_flops_prefill_equal_the_analytic_count(model):
    cfg = model.config
    B, T = 2, 7
    with minimoe.trace() as t:
        model(tokens(cfg, B, T))
    tot = t.totals()
    assert tot["tokens"] == B * T
    assert tot["matmul_flops"] == B * T * expected_matmul_flops_per_token(cfg)
    computed, causal = expected_attention(cfg, B, 0, T)
    assert tot["attention_flops"] == computed
    assert tot["flops"] == B * T * expected_matmul_flops_per_token(cfg) + computed
    assert tot["flops_causal"] == B * T * expected_matmul_flops_per_token(cfg) + causal


def test_flops_decode_with_kv_cache_equal_the_analytic_count(model):
    cfg = model.config
    kv = model.new_kv_cache(1, 16)
    model.forward(tokens(cfg, 1, 9), kv)                           # the prompt, not traced
    with minimoe.trace() as t:
        model.forward(tokens(cfg, 1, 1, seed=1), kv)               # one token at position 9
    tot = t.totals()
    computed, causal = expected_attention(cfg, 1, 9, 1)
    assert tot["matmul_flops"] == expected_matmul_flops_per_token(cfg)
    assert tot["attention_flops"] == computed == 4 * cfg.n_heads * cfg.head_dim * 10 * cfg.n_layers
    assert tot["flops"] == expected_matmul_flops_per_token(cfg) + computed
    assert tot["flops_causal"] == expected_matmul_flops_per_token(cfg) + causal
    # the decode step read all 10 cached keys and values of every layer, in float32
    assert tot["kv_cache_bytes"] == cfg.n_layers * 2 * cfg.n_kv_heads * 10 * cfg.head_dim * 4
    assert t.steps[0]["start"] == 9


def test_estimator_and_trace_agree_on_decode_flops():
    cfg = minimoe.Config.preset("shakespeare-moe")
    model = minimoe.Model(cfg, seed=0)
    kv = model.new_kv_cache(1, 32)
    model.forward(tokens(cfg, 1, 19), kv)
    with minimoe.trace() as t:
        model.forward(tokens(cfg, 1, 1), kv)                       # position 19: 20 keys
    est = minimoe.estimate(cfg, context=20)["flops_per_token"]
    vectors = (2 * cfg.n_layers + 1) * cfg.d_model                 # norm scales, 1 FLOP each
    assert t.totals()["flops"] == est["decode"] - 2 * vectors


# --- bytes ------------------------------------------------------------------------------------------
def stored_bytes(w, n_values: int) -> float:
    """Bytes of n_values of a weight at its stored precision, from the format's bits per weight."""
    if isinstance(w, QTensor):
        return n_values * bits_per_weight(w.fmt) / 8
    return n_values * w.dtype.itemsize


def expected_weight_bytes_one_token(model, chosen: dict) -> float:
    """The touched weights of one token: every weight, except only one embedding row and only the
    chosen experts of each MoE layer (a tied table is read whole once more, as the head)."""
    cfg, total = model.config, 0.0
    for name, w in model.params.items():
        n = math.prod(w.shape)
        if name == "embed.weight":
            total += stored_bytes(w, cfg.d_model) + (stored_bytes(w, n) if cfg.tie_embeddings else 0)
        elif ".moe.experts." in name:
            layer = int(name.split(".")[1])
            total += stored_bytes(w, n // cfg.n_experts * len(set(chosen[layer])))
        else:
            total += stored_bytes(w, n)
    return total


@pytest.mark.parametrize("recipe", list(RECIPES))     # fp32, q8_0, q4_1, q4_0, mxfp4, nf4, mixed ones
@pytest.mark.parametrize("preset", ["tiny-moe", "shakespeare-moe", "oss-like"])
def test_bytes_per_token_equal_the_touched_weights(preset, recipe, numpy_backend):
    check_bytes_per_token(preset, recipe)


def test_bytes_on_the_numba_backend():
    check_bytes_per_token("tiny-moe", "q4_0")


def check_bytes_per_token(preset, recipe):
    base = minimoe.Model(CONFIGS[preset](), seed=0)
    model = base if recipe == "fp32" else minimoe.quantize(base, recipe)
    kv = model.new_kv_cache(1, 16)
    model.forward(tokens(model.config, 1, 5), kv)
    with minimoe.trace() as t:
        _, cache = model.forward(tokens(model.config, 1, 1, seed=3), kv)
    chosen = {i: r["experts"].ravel().tolist() for i, r in enumerate(cache["routing"]) if r}
    assert t.totals()["weight_bytes"] == expected_weight_bytes_one_token(model, chosen)
    if recipe == "q4_0" and preset == "tiny-moe":               # every matrix packs: 32/4.5 on those
        fp = expected_weight_bytes_one_token(base, chosen)
        assert 3 < fp / t.totals()["weight_bytes"] < 32 / 4.5


def test_quantization_changes_bytes_not_flops(numpy_backend):
    base = minimoe.Model(minimoe.Config.preset("tiny-moe"), seed=0)
    x = tokens(base.config, 1, 6)
    out = {}
    for recipe in ("fp32", "q8_0", "q4_0", "mxfp4"):
        m = base if recipe == "fp32" else minimoe.quantize(base, recipe)
        with minimoe.trace() as t:
            m(x)
        out[recipe] = t.totals()
    assert len({o["flops"] for o in out.values()}) == 1
    assert out["fp32"]["weight_bytes"] > out["q8_0"]["weight_bytes"] > out["q4_0"]["weight_bytes"] \
        > out["mxfp4"]["weight_bytes"]


# --- routing ----------------------------------------------------------------------------------------
def test_routing_in_the_trace_equals_the_routers_statistics():
    model = minimoe.Model(minimoe.Config.preset("tiny-moe"), seed=0)
    with minimoe.trace() as t:
        _, cache = model.forward(tokens(model.config, 3, 11))
    routing = t.routing()
    assert list(routing) == [0, 1]
    for i, r in routing.items():
        stats = cache["routing"][i]
        np.testing.assert_array_equal(r["tokens_per_expert"], stats["tokens_per_expert"])
        np.testing.assert_array_equal(r["prob_mass"], stats["prob_mass"])
        np.testing.assert_array_equal(r["experts"], stats["experts"])
        np.testing.assert_array_equal(r["weights"], stats["weights"])
        # each expert's op saw exactly the tokens the router sent it
        for e, n in enumerate(stats["tokens_per_expert"]):
            rec = t.ops.get(f"layers.{i}.moe.experts.{e}.gate")
            assert (rec["tokens"] if rec else 0) == n
    per_token = t.token_routing()
    assert len(per_token) == 33
    assert per_token[12]["layers"][1]["experts"] == cache["routing"][1]["experts"][12].tolist()
    load = views.expert_load(t)
    counts = np.asarray(load[0]["tokens_per_expert"], float)
    assert load[0]["max_over_mean"] == pytest.approx(counts.max() / counts.mean())
    assert load[0]["cv"] == pytest.approx(counts.std() / counts.mean())


def test_active_params_measured_equal_count_params(model):
    with minimoe.trace() as t:
        model(tokens(model.config, 1, 9))
    a = views.active_params(t, model)
    assert a["per_token"]["non_embedding"] == model.param_counts()["active_non_embedding"]
    assert a["per_token"]["embedding_row"] == model.config.d_model
    for row in a["per_layer"]:
        assert row["active_per_token"]["min"] == row["active_per_token"]["max"]
        assert row["total"] == sum(math.prod(s) for n, s in param_shapes(model.config).items()
                                   if n.startswith(f"layers.{row['layer']}."))


# --- tracing changes nothing --------------------------------------------------------------------------
def test_tracing_changes_no_logits_and_no_tokens():
    model = minimoe.Model(minimoe.Config.preset("tiny-moe"), seed=0)
    x = tokens(model.config, 2, 8)
    ref = model(x)
    ref_gen = model.generate(x[0, :4], 6)
    with minimoe.trace() as t:
        out = model(x)
        gen = model.generate(x[0, :4], 6)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(gen, ref_gen)
    assert t.totals()["tokens"] == 16 + 4 + 5                       # forward, prompt, 5 decode steps
    assert len(t.steps) == 1 + 1 + 5
    assert [s["start"] for s in t.steps] == [0, 0, 4, 5, 6, 7, 8]
    assert minimoe.inspect.tracing.ACTIVE is None


def test_traces_do_not_nest():
    with minimoe.trace():
        with pytest.raises(MinimoeError, match="already recording"):
            with minimoe.trace():
                pass


def test_to_json_round_trip(tmp_path):
    model = minimoe.Model(minimoe.Config.preset("tiny-moe"), seed=0)
    with minimoe.trace() as t:
        model(tokens(model.config, 5))
    t.to_json(tmp_path / "trace.json")
    d = json.loads((tmp_path / "trace.json").read_text())
    for key in ("flops", "weight_bytes", "activation_bytes", "kv_cache_bytes", "time_s"):
        assert d["totals"][key] == t.totals()[key]
    assert d["totals"]["kv_cache_bytes"] == 0                       # no KV cache: k, v are activations
    assert len(d["token_routing"]) == 5
    assert "layers.0.attn.q" in t.summary()


# --- plots --------------------------------------------------------------------------------------------
MACHINE = {"bandwidth_gbs": 10.0, "peak_gflops": 100.0, "source": "test"}


def test_every_plot_writes_a_non_empty_image(tmp_path, numpy_backend):
    import matplotlib
    matplotlib.use("Agg")
    model = minimoe.Model(minimoe.Config.preset("tiny-moe"), seed=0, tokenizer=minimoe.ByteTokenizer())
    with minimoe.trace() as t:
        model(model.tokenizer.encode("x = 42  # MoE!"))
    q = minimoe.quantize(model, "q4_0")
    with minimoe.trace() as tq:
        q(model.tokenizer.encode("x = 42  # MoE!"))
    figs = {"load": plots.expert_load_heatmap(t), "routing": plots.routing_map(t, model.tokenizer),
            "bars": plots.flops_bytes_bars({"fp32": t, "q4_0": tq}),
            "roofline": plots.roofline(t, MACHINE), "probs": plots.router_prob_hist(t)}
    assert set(plots.all_figures(t, model.tokenizer, {"fp32": t}, MACHINE)) == \
        {"expert_load", "routing", "router_probs", "roofline", "flops_bytes"}
    for name, fig in figs.items():
        path = plots.save(fig, str(tmp_path / f"{name}.png"))
        assert (tmp_path / f"{name}.png").stat().st_size > 1000, path


def test_routing_plots_need_an_moe():
    model = minimoe.Model(minimoe.Config.preset("tiny"), seed=0)
    with minimoe.trace() as t:
        model(tokens(model.config, 4))
    with pytest.raises(MinimoeError, match="no routing"):
        plots.expert_load_heatmap(t)
    assert set(plots.all_figures(t, machine=MACHINE)) == {"roofline"}


def test_a_calls_time_is_shared_out_whole_among_its_experts_and_weights():
    """A stacked matmul is one call recorded as one op per expert, and a fused call (matmul_many)
    as one op per weight: their times must add up to the call's time, whatever the split."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 8)).astype(np.float32)
    w = rng.standard_normal((5, 3, 8)).astype(np.float32)
    experts = np.array([0, 0, 0, 1, 3, 4, 4])
    with minimoe.trace() as tr:
        tr._matmul("moe.experts.gate", x, w, None, experts, out=np.zeros((7, 3), np.float32),
                   t0=10.0, t1=12.0)
        tr._matmuls(("attn.q", "attn.k"), x[:1], [w[0], w[1, :2]], [None, None], None,
                    out=[np.zeros((1, 3)), np.zeros((1, 2))], t0=0.0)
    gate = [r for name, r in tr.ops.items() if name.endswith(".gate")]
    assert len(gate) == 4 and math.isclose(sum(r["time_s"] for r in gate), 2.0)
    assert [round(r["time_s"], 9) for r in gate] == [round(2.0 * n / 7, 9) for n in (3, 1, 1, 2)]
    q, k = tr.ops["attn.q"]["time_s"], tr.ops["attn.k"]["time_s"]
    assert math.isclose(q / k, 3 / 2)                     # shared by rows: 3 and 2
