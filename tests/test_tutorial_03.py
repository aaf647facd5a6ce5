"""tutorials/03_train_a_tiny_moe.py trains two short runs in fast mode (Shakespeare if present,
else the embedded corpus), and saves the loss and expert-load figures."""
import json

from conftest import ROOT, run_tutorial


def test_tutorial_03_runs(tmp_path):
    out = run_tutorial("03_train_a_tiny_moe.py", tmp_path)
    assert "=== balanced" in out and "=== unbalanced" in out
    assert "busiest expert / average, per layer" in out
    for fig in ("03_loss_curves.png", "03_expert_load.png"):
        assert (tmp_path / fig).stat().st_size > 10_000, fig
    m = json.loads((tmp_path / "03_runs" / "balanced" / "metrics.json").read_text())
    assert m["iters"] == 40 and m["val_loss"] < m["history"][0]["val_loss"]   # it learned something


def test_tutorial_03_is_a_jupytext_percent_notebook():
    jupytext = __import__("pytest").importorskip("jupytext")
    nb = jupytext.read(ROOT / "tutorials" / "03_train_a_tiny_moe.py")
    assert {c.cell_type for c in nb.cells} == {"markdown", "code"} and len(nb.cells) > 10
