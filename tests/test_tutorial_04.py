"""tutorials/04_four_bit_weights.py runs top to bottom in fast mode, checks its hand-made blocks
against minimoe.quant (its own asserts), and saves its figures."""
from conftest import ROOT, run_tutorial


def test_tutorial_04_runs(tmp_path):
    out = run_tutorial("04_four_bit_weights.py", tmp_path, timeout=300)   # trains a tiny model
    assert out.count("by hand") == 2                      # a q4_0 block and an mxfp4 block, by hand
    assert "18 bytes for 32 weights = 4.5 bits per weight" in out
    assert "logits identical after load: True" in out
    assert "gaussian samples" in out and "heavy-tailed samples" in out
    for fig in ("04_error_histograms.png", "04_quantization_report.png"):
        assert (tmp_path / fig).stat().st_size > 10_000


def test_tutorial_04_is_a_jupytext_percent_notebook():
    jupytext = __import__("pytest").importorskip("jupytext")
    nb = jupytext.read(ROOT / "tutorials" / "04_four_bit_weights.py")
    kinds = {c.cell_type for c in nb.cells}
    assert kinds == {"markdown", "code"} and len(nb.cells) > 10
