"""tutorials/06_will_it_fit.py runs top to bottom in fast mode and saves its figures."""
from conftest import run_tutorial


def test_tutorial_06_runs(tmp_path):
    out = run_tutorial("06_will_it_fit.py", tmp_path)
    assert "60.8 GiB" in out                        # gpt-oss-120b with MXFP4 experts
    assert "233.7 GB" in out                        # ... and in bf16
    assert "5.13B" in out                           # active parameters without the embedding
    assert "the state is still (128, 128)" in out   # Gated DeltaNet's memory does not grow
    assert "= 77,856,768 bytes, at any context" in out
    assert "fits on one H100: True" in out and "fits in 64 GB: True" in out
    assert "the MTP layer explains the gap" in out
    for fig in ("06_kv_cache.png", "06_memory_per_precision.png", "06_kv_vs_context.png"):
        assert (tmp_path / fig).stat().st_size > 10_000
