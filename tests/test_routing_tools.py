"""The routing tools of issue 18: sparse upcycling (and training on from it), router precision in
`minimoe quantize --report`, and the routing analysis of `minimoe inspect --routing`."""
import json

import numpy as np
import pytest

import minimoe
from minimoe.cli import main
from minimoe.errors import MinimoeError
from minimoe.inspect import routing
from minimoe.quant.report import router_precision
from minimoe.tokenizer import CharTokenizer
from minimoe.upcycle import upcycle

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish? 1 2 3\n") * 16


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A dense and an MoE char-level checkpoint (random weights), and the text."""
    root = tmp_path_factory.mktemp("routing_tools")
    tok = CharTokenizer.from_text(TEXT)
    base = dict(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                max_seq_len=32)
    minimoe.Model(minimoe.Config(**base), seed=0, tokenizer=tok).save(root / "dense")
    minimoe.Model(minimoe.Config(**base, n_experts=4, top_k=2, d_expert=32), seed=1,
                  tokenizer=tok).save(root / "moe")
    (root / "data.txt").write_text(TEXT, encoding="utf-8")
    return root


# --- upcycling ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("K", [1, 2, 4])
def test_upcycled_model_computes_what_the_dense_model_did(folders, K):
    """With renormalised top-k weights, sum_k w_k FFN(x) = FFN(x): the same logits, whatever the
    router (here a deliberately strong random one) chooses."""
    dense = minimoe.load(folders / "dense")
    moe = upcycle(dense, n_experts=4, top_k=K, router_std=1.0, seed=5)
    tokens = np.random.default_rng(0).integers(0, dense.config.vocab_size, size=(3, 20))
    _, cache = moe.forward(tokens)
    assert len({tuple(r) for r in cache["routing"][0]["experts"]}) > 1      # the router does choose
    np.testing.assert_allclose(moe(tokens), dense(tokens), rtol=1e-5, atol=2e-6)
    assert moe.config.d_expert == dense.config.d_ff
    c = moe.param_counts()
    assert c["total"] - dense.param_counts()["total"] == 2 * (3 * 3 * 32 * 64 + 4 * 32)   # 3 more copies + router


def test_upcycle_noise_breaks_the_symmetry(folders):
    dense = minimoe.load(folders / "dense")
    moe = upcycle(dense, 4, 2, expert_noise=0.1)
    g = moe.params["layers.0.moe.experts.gate"]
    assert not np.allclose(g[0], g[1])
    assert np.allclose(g[0], dense.params["layers.0.ffn.gate.weight"], rtol=0.6, atol=0.1)


def test_upcycle_refuses_an_moe(folders):
    with pytest.raises(MinimoeError, match="dense model"):
        upcycle(minimoe.load(folders / "moe"), 4, 2)


def test_cli_upcycle_then_train_on(folders, tmp_path, capsys):
    out = tmp_path / "up"
    assert main(["upcycle", "--model", str(folders / "dense"), "--experts", "4", "--top-k", "2",
                 "--out", str(out)]) == 0
    assert "4 experts of width 64" in capsys.readouterr().out
    up = minimoe.load(out)
    assert up.config.n_experts == 4 and up.tokenizer is not None
    run = tmp_path / "run"
    assert main(["train", "--init", str(out), "--data", str(folders / "data.txt"), "--max-iters", "3",
                 "--batch-size", "2", "--block-size", "16", "--eval-iters", "1", "--sample-tokens", "0",
                 "--bias-update-rate", "0.01", "--out", str(run), "--quiet"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["iters"] == 3 and m["model_config"]["n_experts"] == 4
    assert m["model_config"]["router_correction_bias"]                  # added as a zero buffer
    assert main(["train", "--init", str(out), "--preset", "tiny", "--out", str(tmp_path / "x")]) == 1
    assert "leave out --preset" in capsys.readouterr().err


def test_training_from_an_upcycled_model_starts_at_the_dense_loss(folders, tmp_path):
    from minimoe.train.loop import TrainConfig, Trainer
    upcycle(minimoe.load(folders / "dense"), 4, 2).save(tmp_path / "up")
    losses = []
    for init in (folders / "dense", tmp_path / "up"):
        tc = TrainConfig(init=str(init), data=str(folders / "data.txt"), batch_size=4, block_size=16,
                         eval_iters=3, out=str(tmp_path / init.name), threads=1)
        losses.append(Trainer.new(tc, verbose=False).evaluate()["val_loss"])   # the same batches
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)


# --- router precision ---------------------------------------------------------------------------------

def test_router_precision_on_exactly_representable_weights(folders):
    """A router whose weights q8_0 stores exactly (integers times the block scale) picks the same
    experts and gives the same loss."""
    model = minimoe.load(folders / "moe")
    rng = np.random.default_rng(0)
    for i in (0, 1):
        w = rng.integers(-127, 128, size=(4, 32)).astype(np.float32)
        w[:, 0] = 127                                                   # each block's max: scale 1/50
        model.params[f"layers.{i}.moe.router.weight"][...] = w / 50
    rows = router_precision(model, folders / "data.txt", formats=["q8_0"])
    for r in rows:
        assert r["delta_loss"] == pytest.approx(0.0, abs=1e-6)
        if r["layer"] != "all":
            assert r["exact"] == 1.0 and r["overlap"] == 1.0


def test_router_precision_agreement_matches_the_packed_model(folders):
    """Oracle: with every router packed, layer 0's router sees exactly the float model's inputs,
    so its top-k agreement is read straight off the two models' routing."""
    from minimoe.evaluate import eval_tokens
    from minimoe.quant.model import quantize_model
    model = minimoe.load(folders / "moe")
    rows = router_precision(model, folders / "data.txt", formats=["q4_0"])
    r0 = next(r for r in rows if r["layer"] == 0)
    packed = quantize_model(model, {"router": "q4_0"})
    tokens = eval_tokens(model, folders / "data.txt")
    T = model.config.max_seq_len
    windows = tokens[: (len(tokens) - 1) // T * T].reshape(-1, T)
    a = np.sort(model.forward(windows)[1]["routing"][0]["experts"], axis=1)
    b = np.sort(packed.forward(windows)[1]["routing"][0]["experts"], axis=1)
    assert r0["exact"] == pytest.approx(np.mean(np.all(a == b, axis=1)))
    assert 0.5 < r0["exact"] < 1.0                                          # 4 bits do move some picks
    all_rows = next(r for r in rows if r["layer"] == "all")
    from minimoe.evaluate import evaluate
    assert all_rows["val_loss"] == pytest.approx(evaluate(packed, tokens)["loss"], rel=1e-6)


def test_cli_quantize_report_shows_the_router_table(folders, capsys):
    assert main(["quantize", "--model", str(folders / "moe"), "--report", "--data", str(folders / "data.txt"),
                 "--recipes", "fp32,q8_0", "--router-formats", "q8_0,q4_0"]) == 0
    out = capsys.readouterr().out
    assert "router precision" in out and "same top-k" in out and "q4_0" in out
    assert main(["quantize", "--model", str(folders / "moe"), "--report", "--data", str(folders / "data.txt"),
                 "--recipes", "fp32", "--router-formats", "q8_0", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [r["layer"] for r in d["router"]] == [0, 1, "all"] and d["recipes"][0]["recipe"] == "fp32"


# --- routing analysis ---------------------------------------------------------------------------------

def test_analysis_by_hand():
    """Three tokens, two layers' worth of one layer, 3 experts: co-activation, specialization,
    load and entropy computed by hand."""
    assigned = np.array([[[1, 1, 0], [1, 0, 1], [0, 1, 1]]], dtype=bool)  # (L=1, N=3, E=3)
    probs = np.array([[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]]])
    r = {"assigned": assigned, "probs": probs, "tokens": np.array([5, 6, 5]), "layers": [0],
         "n_experts": 3, "top_k": 2}
    co = routing.coactivation(r)[0]
    np.testing.assert_allclose(co, [[2 / 3, 1 / 3, 1 / 3], [1 / 3, 2 / 3, 1 / 3], [1 / 3, 1 / 3, 2 / 3]])
    classes = np.array([0, 3, 0])                                          # lower, space, lower
    spec = routing.specialization(r, classes)[0]
    np.testing.assert_allclose(spec[0], [0.25, 0.5, 0.25])                 # the two 'lower' tokens
    np.testing.assert_allclose(spec[3], [0.5, 0.0, 0.5])
    assert spec[1].sum() == 0                                              # no uppercase token
    np.testing.assert_allclose(routing.load(r)[0], [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(routing.routing_entropy(r), [(np.log(2) + 0 + np.log(3)) / 3])
    assert [routing.CLASSES[routing.char_class(c)] for c in "aZ7 \n,\x01"] == \
        ["lower", "upper", "digit", "space", "newline", "punct", "other"]


def test_collect_counts_only_what_ran_under_capacity(folders):
    model = minimoe.load(folders / "moe")
    model.config = model.config.replace(eval_capacity_factor=0.5)
    r = routing.collect(model, str(folders / "data.txt"), max_tokens=256)
    per_token = r["assigned"].sum(axis=2)                                  # (L, N)
    assert per_token.max() <= 2 and (per_token < 2).any()                  # some picks were dropped
    assert r["assigned"].reshape(2, -1, 32, 4).sum(axis=2).max() <= 8      # capacity 8 per sequence


def test_load_history_from_metrics():
    metrics = {"history": [{"iter": 0, "expert_load": [None, [0.5, 0.5]]},
                           {"iter": 10, "expert_load": [None, [0.9, 0.1]]}]}
    its, loads, layers = routing.load_history(metrics)
    assert its.tolist() == [0, 10] and layers == [1] and loads[:, 0, 0].tolist() == [0.5, 0.9]
    with pytest.raises(MinimoeError, match="expert_load"):
        routing.load_history({"history": [{"iter": 0}]})


def test_cli_inspect_routing_prints_and_plots(folders, tmp_path, capsys):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"history": [{"iter": i, "expert_load": [[0.25] * 4, [0.4, 0.2, 0.2, 0.2]]}
                                               for i in (0, 5)]}))
    plot = tmp_path / "plots"
    assert main(["inspect", "--model", str(folders / "moe"), "--routing", "--data", str(folders / "data.txt"),
                 "--metrics", str(metrics), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    for words in ("entropy", "share of each class's assignments", "favourite tokens", "newline"):
        assert words in out, words
    for stem in ("specialization", "coactivation", "entropy", "load_over_training"):
        assert (plot / f"{stem}.png").stat().st_size > 5000, stem
    assert main(["inspect", "--model", str(folders / "moe"), "--routing", "--data", str(folders / "data.txt"),
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert np.array(d["coactivation"]).shape == (2, 4, 4) and len(d["entropy"]) == 2


@pytest.mark.parametrize("argv, words", [
    (["inspect", "--routing"], "--routing needs --data"),
    (["inspect", "--data", "x.txt"], "go with --routing"),
])
def test_cli_inspect_routing_errors(folders, argv, words, capsys):
    assert main(argv[:1] + ["--model", str(folders / "moe")] + argv[1:]) == 1
    assert words in capsys.readouterr().err


def test_cli_inspect_routing_refuses_a_dense_model(folders, capsys):
    assert main(["inspect", "--model", str(folders / "dense"), "--routing", "--data",
                 str(folders / "data.txt")]) == 1
    assert "needs an MoE model" in capsys.readouterr().err


@pytest.mark.parametrize("option", [dict(router_correction_bias=True), dict(eval_capacity_factor=1.25),
                                    dict(router="expert_choice"), dict(router="noisy_topk")])
def test_exports_refuse_what_their_formats_cannot_express(option):
    """A softmax router with a selection bias, or a capacity limit at inference, would be dropped
    silently by a Mixtral config.json or a llama GGUF: both exports refuse them by name."""
    from minimoe.io.gguf_file import GGUFError, arch_for
    from minimoe.io.hf_export import ExportError, family_for
    cfg = minimoe.Config(d_model=32, n_heads=4, n_experts=4, top_k=2, d_ff=64, **option)
    field = next(iter(option))
    with pytest.raises(GGUFError, match=field):
        arch_for(cfg)
    with pytest.raises(ExportError, match=field):
        family_for(cfg)
