"""`minimoe eval` and the quantization report: val loss against a hand-rolled oracle (one window at a
time through minimoe.nn.loss), clear data errors, and the `minimoe quantize` / `minimoe eval` CLI.

Shape legend: B batch, T window length, V vocab.
"""
import json

import numpy as np
import pytest

import minimoe
from minimoe import quant
from minimoe.cli import main
from minimoe.errors import DataError, MinimoeError
from minimoe.evaluate import eval_tokens, evaluate
from minimoe.nn import loss
from minimoe.quant.model import REPORT_RECIPES
from minimoe.quant.report import format_report, plot_report, quantization_report
from minimoe.tokenizer import CharTokenizer
from minimoe.train.data import build_dataset

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n") * 12


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A small char-level MoE checkpoint (random weights; dims split into blocks of 32)."""
    folder = tmp_path_factory.mktemp("ckpt")
    tok = CharTokenizer.from_text(TEXT)
    cfg = minimoe.Config(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                         d_ff=128, n_experts=4, top_k=2, d_expert=64, max_seq_len=32)
    minimoe.Model(cfg, seed=0, tokenizer=tok).save(folder)
    (folder.parent / "data.txt").write_text(TEXT, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def data(ckpt):
    return ckpt.parent / "data.txt"


def test_minimoe_quantize_is_the_model_level_function():
    assert minimoe.quantize is quant.model.quantize_model
    assert quant.quantize is quant.qtensor.quantize                    # still the array-level one


# --- evaluate --------------------------------------------------------------------------------------

def oracle_loss(model, tokens, T):
    """Each window on its own, through the training loss: mean of the per-window sums."""
    total, n = 0.0, 0
    for s in range(0, len(tokens) - 1, T):
        window = tokens[s: s + T + 1]
        if len(window) < 2:
            break
        value, _ = loss.forward(model(window[:-1]), window[1:])      # (t, V), (t,) -> mean
        total += value * (len(window) - 1)
        n += len(window) - 1
    return total / n, n


def test_evaluate_against_window_by_window_oracle(ckpt, data):
    model = minimoe.load(ckpt)
    val = eval_tokens(model, data)
    same_as_training = build_dataset(str(data), model.tokenizer, block_size=32)
    np.testing.assert_array_equal(val, same_as_training.val)          # the split `minimoe train` uses
    np.testing.assert_array_equal(eval_tokens(model, data, "train"), same_as_training.train)
    assert len(eval_tokens(model, data, "all")) == len(TEXT)
    for T, B in [(32, 8), (7, 3), (32, 1)]:
        r = evaluate(model, val, block_size=T, batch_size=B)
        expected, n = oracle_loss(model, val, T)
        assert r["n_tokens"] == n == len(val) - 1                     # every target counted once
        assert r["loss"] == pytest.approx(expected, rel=1e-5)
        assert r["perplexity"] == pytest.approx(np.exp(r["loss"]))
    assert evaluate(model, val, max_tokens=10)["n_tokens"] == 10


def test_evaluate_refuses_bad_input(ckpt):
    model = minimoe.load(ckpt)
    with pytest.raises(DataError, match="at least 2 tokens"):
        evaluate(model, np.array([1]))
    with pytest.raises(MinimoeError, match=r"block_size must be an integer in \[1, 32\]"):
        evaluate(model, np.arange(10), block_size=64)


@pytest.mark.parametrize("content, match", [(b"", "empty"), (b"ab\x00cd", "binary"),
                                            (b"\xff\xfe\xfa", "not UTF-8"), (b"Speak", "too short")])
def test_bad_data_files(ckpt, tmp_path, content, match):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match) as info:
        eval_tokens(minimoe.load(ckpt), path)
    assert str(path) in str(info.value)
    with pytest.raises(DataError, match="cannot read"):
        eval_tokens(minimoe.load(ckpt), tmp_path / "missing.txt")


def test_text_the_tokenizer_cannot_encode(ckpt, tmp_path):
    path = tmp_path / "other.txt"
    path.write_text("zebra ZZZ" * 10, encoding="utf-8")
    with pytest.raises(DataError, match=r"other.txt: character '.' is not in .* char tokenizer"):
        eval_tokens(minimoe.load(ckpt), path)
    with pytest.raises(MinimoeError, match="no tokenizer"):
        eval_tokens(minimoe.Model(minimoe.Config.preset("tiny")), path)
    with pytest.raises(MinimoeError, match="split must be one of"):
        eval_tokens(minimoe.load(ckpt), path, "test")


# --- the report ------------------------------------------------------------------------------------

def test_quantization_report(ckpt, data, tmp_path):
    model = minimoe.load(ckpt)
    rows = quantization_report(model, data)
    assert [r["recipe"] for r in rows] == REPORT_RECIPES
    by = {r["recipe"]: r for r in rows}
    assert by["fp32"]["delta_loss"] == 0 and by["fp32"]["bits_per_weight"] == 32
    mem = [by[r]["weight_bytes"] for r in ("fp32", "q8_0", "q4_1", "q4_0", "mxfp4")]
    assert mem == sorted(mem, reverse=True)
    assert by["mxfp4-moe"]["mixed"] and not by["q4_0"]["mixed"]
    assert abs(by["q8_0"]["delta_loss"]) < 0.01                       # 8 bits barely move the loss
    val = eval_tokens(model, data)
    q4 = minimoe.quantize(model, "q4_0")
    assert by["q4_0"]["val_loss"] == pytest.approx(evaluate(q4, val)["loss"], rel=1e-12)
    text = format_report(rows)
    assert "val loss" in text and "mxfp4-moe" in text
    png = plot_report(rows, tmp_path / "figs" / "report.png")
    assert (tmp_path / "figs" / "report.png").stat().st_size > 10_000 and png.endswith("report.png")


def test_report_without_data_still_compares_memory_and_error(ckpt, tmp_path):
    rows = quantization_report(minimoe.load(ckpt), recipes=["fp32", "q4_0"])
    assert rows[1]["val_loss"] is None and rows[1]["rel_rmse"] > 0
    assert "pass data" in format_report(rows)
    plot_report(rows, tmp_path / "r.png")


# --- the CLI ---------------------------------------------------------------------------------------

def test_cli_quantize_writes_a_packed_checkpoint(ckpt, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(ckpt), "--recipe", "mxfp4-moe", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "recipe mxfp4-moe" in text and "layers.1.moe.experts.gate" in text and "RMSE" in text
    assert "bytes before" in text and "x smaller" in text and f"wrote {out}" in text
    q = minimoe.load(out)
    assert q.params["layers.0.moe.experts.up"].fmt == "mxfp4"
    assert q.params["layers.0.attn.q.weight"].fmt == "q8_0"
    assert q.tokenizer is not None


def test_cli_quantize_json(ckpt, capsys):
    assert main(["quantize", "--model", str(ckpt), "--recipe", "q4_0", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["recipe"] == "q4_0" and {r["fmt"] for r in d["tensors"]} == {"q4_0", "q8_0", "fp32"}


def test_cli_quantize_report_and_plot(ckpt, data, tmp_path, capsys):
    plot = tmp_path / "report.png"
    assert main(["quantize", "--model", str(ckpt), "--report", "--data", str(data), "--plot", str(plot),
                 "--recipes", "fp32,q4_0,mxfp4-moe", "--max-tokens", "100"]) == 0
    text = capsys.readouterr().out
    assert "100 tokens of the val split" in text and "mxfp4-moe" in text and plot.exists()


@pytest.mark.parametrize("argv, words", [
    (["quantize", "--recipe", "nope"], ["unknown recipe 'nope'", "mxfp4-moe"]),
    (["quantize"], ["--recipe"]),
    (["quantize", "--recipe", "q4_0", "--plot", "x.png"], ["go with --report"]),
    (["quantize", "--report", "--recipe", "q4_0"], ["leave out --recipe"]),
])
def test_cli_quantize_errors(ckpt, argv, words, capsys):
    assert main(argv[:1] + ["--model", str(ckpt)] + argv[1:]) == 1
    err = capsys.readouterr().err
    assert err.startswith("minimoe quantize: error:")
    for w in words:
        assert w in err


def test_cli_eval(ckpt, data, tmp_path, capsys):
    assert main(["eval", "--model", str(ckpt), "--data", str(data)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("val loss ") and "perplexity" in text
    assert main(["eval", "--model", str(ckpt), "--data", str(data), "--split", "all", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    model = minimoe.load(ckpt)
    assert r["loss"] == pytest.approx(evaluate(model, eval_tokens(model, data, "all"))["loss"], rel=1e-12)
    # a quantized checkpoint evaluates the same way
    main(["quantize", "--model", str(ckpt), "--recipe", "q4_0", "--out", str(tmp_path / "q")])
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "q"), "--data", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] > 0
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["eval", "--model", str(ckpt), "--data", str(empty)]) == 1
    assert "empty" in capsys.readouterr().err


def test_cli_quantize_strict_refuses_rows_that_do_not_split(capsys):
    argv = ["quantize", "--preset", "shakespeare-moe", "--recipe", "q4_0"]
    assert main(argv) == 0
    assert "172 is not a multiple of 32: kept fp32" in capsys.readouterr().out
    assert main(argv + ["--strict"]) == 1
    err = capsys.readouterr().err
    assert "layers.0.moe.experts.down" in err and "blocks of 32" in err and "strict" in err
