"""tutorials/04b_k_quants.py runs top to bottom in fast mode: its hand-built Q4_K super-block
decodes identically three ways, and it saves its figure."""
from conftest import ROOT, run_tutorial


def test_tutorial_04b_runs(tmp_path):
    out = run_tutorial("04b_k_quants.py", tmp_path)
    assert "144 bytes for 256 weights = 4.5 bits per weight" in out
    assert "by hand == minimoe == loop oracle: True" in out
    assert "q6_k" in out and "fused GEMV" in out
    assert (tmp_path / "04b_bits_vs_error.png").stat().st_size > 10_000


def test_tutorial_04b_is_a_jupytext_percent_notebook():
    jupytext = __import__("pytest").importorskip("jupytext")
    nb = jupytext.read(ROOT / "tutorials" / "04b_k_quants.py")
    assert {c.cell_type for c in nb.cells} == {"markdown", "code"} and len(nb.cells) > 10
    assert "__file__" not in (ROOT / "tutorials" / "04b_k_quants.py").read_text()
