import os
import pathlib

import matplotlib
import pytest

matplotlib.use("Agg")

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture(autouse=True)
def float_activations():
    """Tests compare the kernels with float references, so they run the float-activation decode
    GEMVs; the int8 path (the default on a CPU with VNNI) is tested against its own oracles in
    tests/test_kernels_int8.py, which sets the precision per test."""
    from minimoe.kernels.backend import set_activation_precision
    previous = set_activation_precision("float")
    yield
    set_activation_precision(previous)


@pytest.fixture
def shakespeare_path():
    if not SHAKESPEARE.exists():
        pytest.skip(f"{SHAKESPEARE} not present")
    return SHAKESPEARE


def run_tutorial(name: str, out_dir, timeout: int = 120) -> str:
    """Run tutorials/<name> as a script in fast mode (MINIMOE_FAST=1), figures into out_dir.
    Returns its stdout; fails the test with its stderr if it exits non-zero."""
    import subprocess
    import sys
    env = dict(os.environ, MINIMOE_FAST="1", MINIMOE_TUTORIAL_OUT=str(out_dir), MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, str(ROOT / "tutorials" / name)], capture_output=True, text=True,
                       env=env, timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, f"tutorials/{name} failed:\n{r.stderr[-3000:]}"
    return r.stdout


def run_tutorial_here(name: str, cwd, timeout: int = 300) -> str:
    """Run tutorials/<name> in fast mode from the folder cwd with no MINIMOE_TUTORIAL_OUT, as a
    student would: its outputs go to cwd/minimoe_out. Returns its stdout."""
    import subprocess
    import sys
    env = dict(os.environ, MINIMOE_FAST="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("MINIMOE_TUTORIAL_OUT", None)
    r = subprocess.run([sys.executable, str(ROOT / "tutorials" / name)], capture_output=True, text=True,
                       env=env, timeout=timeout, cwd=cwd)
    assert r.returncode == 0, f"tutorials/{name} failed:\n{r.stderr[-3000:]}"
    return r.stdout


def check_notebook(name: str) -> None:
    """tutorials/<name> is a jupytext percent notebook that runs unchanged as one: its header, no
    __file__, and markdown and code cells (skips without jupytext)."""
    text = (ROOT / "tutorials" / name).read_text()
    assert "__file__" not in text and text.startswith("# ---\n# jupyter:")
    jupytext = pytest.importorskip("jupytext")
    nb = jupytext.reads(text, fmt="py:percent")
    assert {c.cell_type for c in nb.cells} == {"markdown", "code"} and len(nb.cells) > 10
