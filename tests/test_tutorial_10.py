"""tutorials/10_run_a_real_size_model.py in fast mode (a scaled-down gpt-oss: the real widths, 2
layers of 8 experts): bf16 bits, a streamed checkpoint, memory-mapped loading, one token's pages
against its routing, quantizing while loading and `bench big` beside the estimator."""
import re

from conftest import ROOT, run_tutorial_here


def test_tutorial_10_runs_in_its_working_directory(tmp_path):
    out = run_tutorial_here("10_run_a_real_size_model.py", tmp_path)
    pages = re.findall(r"router picked (\[.*?\]), experts in memory (\[.*?\])", out)
    assert pages and all(picked == whole for picked, whole in pages)   # exactly the routed experts
    assert "QTensor(fmt='q8_0'" in out and "QTensor(fmt='bf16'" in out
    assert "peak RSS, load + decode" in out and "bandwidth bound" in out and "within" in out
    assert (tmp_path / "minimoe_out" / "10" / "10_expert_pages.png").stat().st_size > 10_000


def test_tutorial_10_is_notebook_safe():
    text = (ROOT / "tutorials" / "10_run_a_real_size_model.py").read_text()
    assert "__file__" not in text and text.startswith("# ---\n# jupyter:")
