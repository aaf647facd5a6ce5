from conftest import ROOT, run_tutorial


def test_tutorial_01_runs_and_checks_itself(tmp_path):
    out = run_tutorial("01_forward_pass.py", tmp_path)
    assert "max difference from model(tokens)" in out
    assert "active per token" in out


def test_tutorial_01_is_a_jupytext_percent_notebook():
    jupytext = __import__("pytest").importorskip("jupytext")
    nb = jupytext.read(ROOT / "tutorials" / "01_forward_pass.py")
    kinds = {c.cell_type for c in nb.cells}
    assert kinds == {"markdown", "code"} and len(nb.cells) > 10
