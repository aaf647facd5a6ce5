"""Every tutorial runs unchanged as a notebook: tutorials/NN_*.py is found by glob (a new tutorial
is covered by adding its file), converted by jupytext and executed cell by cell in a Jupyter kernel
by nbclient, in fast mode, from a scratch working directory with no output folder configured, so
its figures must land in ./minimoe_out/. The `course` extra installs jupytext, ipykernel and
nbclient; without them the execution tests skip. The script runs stay in test_tutorial_NN.py."""
import os
import re

import pytest

from conftest import ROOT

TUTORIALS = sorted(p for p in (ROOT / "tutorials").glob("[0-9][0-9]*_*.py"))
SLOW_FIRST = ("03_", "05_", "13_")        # the longest fast runs get a longer cell timeout


def test_the_tutorials_are_found():
    names = [p.name for p in TUTORIALS]
    assert "01_forward_pass.py" in names and len(names) >= 10, names


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_is_notebook_safe(path):
    """No __file__ (a kernel has none) and a jupytext percent header, parsed into both cell kinds."""
    text = path.read_text()
    assert not re.search(r"\b__file__\b", text), f"{path.name} uses __file__, which a notebook lacks"
    assert text.startswith("# ---\n# jupyter:"), f"{path.name} lacks the jupytext header"
    jupytext = pytest.importorskip("jupytext")
    nb = jupytext.reads(text, fmt="py:percent")
    assert {c.cell_type for c in nb.cells} == {"markdown", "code"}


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_executes_as_a_notebook(path, tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import NoSuchKernel, KernelSpecManager
    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no python3 Jupyter kernel installed")
    # The kernel inherits this process's environment: fast mode, no output folder given, this
    # worktree's minimoe first on the path, caches in the scratch folder.
    monkeypatch.delenv("MINIMOE_TUTORIAL_OUT", raising=False)
    monkeypatch.setenv("MINIMOE_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("MINIMOE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    nb = jupytext.read(path)
    client = nbclient.NotebookClient(nb, timeout=600 if path.name.startswith(SLOW_FIRST) else 300,
                                     kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name} failed as a notebook:\n{str(e)[-3000:]}")
    figures = list((tmp_path / "minimoe_out").rglob("*.png"))
    wrote = "savefig" in path.read_text()
    assert not wrote or figures, f"{path.name} saves figures, but none landed in ./minimoe_out/"
