"""Every pdb recipe the docs and tutorial 12 give runs as written and stops where it says.

A recipe is a line holding `python -m pdb` in docs/*.md, README.md or tutorials/*.py (comment
markers stripped). It runs in a shell from the repository root with pdb's commands fed on stdin
(`where`, then end of input, which quits), and must stop in the function it breaks on."""
import os
import re
import subprocess

import pytest

from conftest import ROOT

SOURCES = sorted(ROOT.glob("docs/*.md")) + [ROOT / "README.md"] + sorted(ROOT.glob("tutorials/[0-9]*.py"))


def recipes() -> list[tuple[str, str]]:
    found = []
    for path in SOURCES:
        for line in path.read_text().splitlines():
            line = re.sub(r"^\s*#\s?", "", line).strip()
            if "python -m pdb" in line and " -c " in line and not line.startswith("`"):
                found.append((f"{path.relative_to(ROOT)}: {line[:60]}", line))
    return found


RECIPES = recipes()


def test_the_documented_recipes_are_found():
    where = {label.split(":")[0] for label, _ in RECIPES}
    assert {"docs/kernels.md", "docs/architecture.md", "tutorials/12_debugger_day.py"} <= where, where


@pytest.mark.parametrize("label,command", RECIPES, ids=[l for l, _ in RECIPES])
def test_pdb_recipe_stops_at_its_breakpoint(label, command):
    target = re.search(r'-c "b ([\w.]+)"', command).group(1)
    function = target.split(".")[-1] if not target.endswith(".numba") else target.split(".")[-2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               MINIMOE_FAST="1", MPLBACKEND="Agg")
    r = subprocess.run(["bash", "-c", command], input="where\n", capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=300)
    out = r.stdout + r.stderr
    assert "Bad lineno" not in out and "not found from sys.path" not in out, out[-2000:]
    stops = [l for l in out.splitlines() if l.startswith("> ") and l.endswith(f"{function}()")]
    assert stops, f"{label}: never stopped in {function}:\n{out[-2000:]}"
