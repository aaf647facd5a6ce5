import os
import subprocess
import sys

from conftest import ROOT

TUTORIAL = ROOT / "tutorials" / "08_real_architectures.py"


def test_tutorial_08_runs_in_its_working_directory_and_checks_itself(tmp_path):
    """Fast mode, run from another directory with no output folder given: a notebook has no
    __file__, so the figures must land in ./minimoe_out of the working directory."""
    env = {k: v for k, v in os.environ.items() if k != "MINIMOE_TUTORIAL_OUT"}
    env.update(MINIMOE_FAST="1", MPLBACKEND="Agg", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(TUTORIAL)], capture_output=True, text=True, env=env,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    for family in ("Mixtral", "OLMoE", "Qwen3-MoE", "gpt-oss", "DeepSeek-V3"):
        assert family in out
    assert "DeepSeek-V3  chooses" in out and "weights summing to 2.500" in out
    assert "max |naive - absorbed|" in out and "probability outside the allowed keys 0.0e+00" in out
    for stem in ("routers", "kv_cache", "attention_pattern", "sinks"):
        assert (tmp_path / "minimoe_out" / f"08_{stem}.png").stat().st_size > 1000, stem


def test_tutorial_08_is_notebook_safe():
    source = TUTORIAL.read_text()
    assert "__file__" not in source
    jupytext = __import__("pytest").importorskip("jupytext")
    nb = jupytext.read(TUTORIAL)
    assert {c.cell_type for c in nb.cells} == {"markdown", "code"} and len(nb.cells) > 10
