"""tutorials/02_backprop_by_hand.py runs top to bottom in fast mode, every check passes, and it
saves its figures."""
from conftest import ROOT, run_tutorial


def test_tutorial_02_runs_and_every_check_passes(tmp_path):
    out = run_tutorial("02_backprop_by_hand.py", tmp_path)
    for layer in ("linear", "rmsnorm", "cross-entropy", "swiglu", "rope", "attention", "moe top-2",
                  "aux + z losses (every parameter)"):
        assert f"{layer}: " in out and "NOT OK" not in out, layer
    assert "worst relative error over 21 parameters" in out
    for fig in ("02_finite_difference_error.png", "02_routing_jump.png", "02_model_gradcheck.png"):
        assert (tmp_path / fig).stat().st_size > 10_000, fig


def test_tutorial_02_is_a_jupytext_percent_notebook():
    jupytext = __import__("pytest").importorskip("jupytext")
    nb = jupytext.read(ROOT / "tutorials" / "02_backprop_by_hand.py")
    assert {c.cell_type for c in nb.cells} == {"markdown", "code"} and len(nb.cells) > 15
