"""tutorials/06_will_it_fit.py runs top to bottom in fast mode and saves its figures."""
from conftest import run_tutorial


def test_tutorial_06_runs(tmp_path):
    out = run_tutorial("06_will_it_fit.py", tmp_path)
    assert "60.8 GiB" in out                        # gpt-oss-120b with MXFP4 experts
    assert "233.7 GB" in out                        # ... and in bf16
    assert "5.13B" in out                           # active parameters without the embedding
    for fig in ("06_kv_cache.png", "06_memory_per_precision.png"):
        assert (tmp_path / fig).stat().st_size > 10_000
