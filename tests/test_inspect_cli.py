"""`minimoe inspect`: tables, JSON, figures, and clear errors."""
import json

import pytest

import minimoe
from minimoe.cli import main
from minimoe.inspect import machine


@pytest.fixture(autouse=True)
def quick_machine(monkeypatch):
    """Skip the bandwidth/peak measurement (the numbers only place the roofline), and Numba's
    start-up (the trace counts the same on the NumPy twins)."""
    monkeypatch.setattr(machine, "machine", lambda: {"bandwidth_gbs": 10.0, "peak_gflops": 100.0,
                                                     "source": "test"})
    with minimoe.backend("numpy"):
        yield


def test_inspect_prints_the_table_totals_and_routing(capsys):
    assert main(["inspect", "--preset", "tiny-moe", "--prompt", "def f(x): return 42"]) == 0
    out = capsys.readouterr().out
    for words in ("layers.0.attn.q", "layers.1.moe.experts.* (2 ran)", "FLOPs per token",
                  "weight bytes/token", "parameters", "expert load", "routing of the prompt",
                  "max/mean"):
        assert words in out, words


def test_inspect_json_with_a_recipe(capsys):
    assert main(["inspect", "--preset", "tiny-moe", "--prompt", "Hi!", "--recipe", "q4_0", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["recipe"] == "q4_0"
    assert d["token"]["totals"]["tokens"] == 1 and d["prompt_trace"]["totals"]["tokens"] == 3
    assert {o["fmt"] for o in d["token"]["ops"] if o["kind"] == "matmul"} >= {"q4_0"}
    assert len(d["prompt_trace"]["token_routing"]) == 3


def test_inspect_writes_every_figure(tmp_path, capsys):
    assert main(["inspect", "--preset", "tiny-moe", "--prompt", "a1,", "--plot", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for stem in ("expert_load", "routing", "router_probs", "roofline", "flops_bytes"):
        assert (tmp_path / f"{stem}.png").stat().st_size > 1000
        assert f"{stem}.png" in out


@pytest.mark.parametrize("argv, words", [
    (["inspect", "--prompt", "x"], "give --model DIR"),
    (["inspect", "--preset", "tiny-moe", "--prompt", ""], "no tokens"),
    (["inspect", "--preset", "tiny-moe", "--prompt", "x" * 80], "max_seq_len"),
    (["inspect", "--preset", "tiny-moe", "--prompt", "x", "--recipe", "q3"], "unknown recipe"),
])
def test_inspect_errors_are_clear(argv, words, capsys):
    assert main(argv) == 1
    assert words in capsys.readouterr().err
