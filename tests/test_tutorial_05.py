"""tutorials/05_kernels_and_roofline.py runs top to bottom in fast mode (its own asserts check
each version against dequantize-then-multiply) and saves its two figures."""
from conftest import ROOT, run_tutorial


def test_tutorial_05_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMOE_CACHE", str(tmp_path / "cache"))     # never the user's machine.json
    out = run_tutorial("05_kernels_and_roofline.py", tmp_path, timeout=300)
    for line in ("python loop (q4_0)", "NumPy twin (q4_0)", "Numba fused (q4_0)", "float32 BLAS",
                 "fused q4_0 vs float32 BLAS", "copy bandwidth", "ceiling tok/s",
                 "dx = amax/127", "lane 0: -100", "int8 fused (q4_0)", "int8 vs float activations"):
        assert line in out
    for fig in ("05_roofline.png", "05_bandwidth.png", "05_cache_curve.png", "05_int8.png"):
        assert (tmp_path / fig).stat().st_size > 10_000
    assert (tmp_path / "cache" / "machine.json").exists()


def test_tutorial_05_is_a_jupytext_percent_notebook():
    jupytext = __import__("pytest").importorskip("jupytext")
    nb = jupytext.read(ROOT / "tutorials" / "05_kernels_and_roofline.py")
    kinds = {c.cell_type for c in nb.cells}
    assert kinds == {"markdown", "code"} and len(nb.cells) > 8
