from conftest import ROOT, run_tutorial


def test_tutorial_07_runs_and_checks_itself(tmp_path):
    out = run_tutorial("07_what_a_token_touches.py", tmp_path, timeout=300)
    assert "(2 ran)" in out                                   # only K of E experts did any work
    assert "ratio" in out and "F = 192, untied" in out
    assert "total params" in out and "router FLOPs" in out
    for stem in ("flops_bytes", "expert_kinds", "expert_load", "routing", "router_probs", "roofline"):
        assert (tmp_path / f"07_{stem}.png").stat().st_size > 1000, stem


def test_tutorial_07_is_a_jupytext_percent_notebook():
    jupytext = __import__("pytest").importorskip("jupytext")
    nb = jupytext.read(ROOT / "tutorials" / "07_what_a_token_touches.py")
    assert {c.cell_type for c in nb.cells} == {"markdown", "code"} and len(nb.cells) > 10
