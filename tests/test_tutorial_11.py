"""tutorials/11_build_it_yourself.py: the solved file matches minimoe at every step, and the blank
copy that minimoe.exercises.blank makes still runs top to bottom, scoring 0."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT, run_tutorial
from minimoe.errors import MinimoeError
from minimoe.exercises.blank import blank

TUTORIAL = ROOT / "tutorials" / "11_build_it_yourself.py"


def test_tutorial_11_solved_matches_minimoe_at_every_step(tmp_path):
    out = run_tutorial("11_build_it_yourself.py", tmp_path, timeout=300)
    assert "8/8 steps match minimoe" in out and "DIFFERS" not in out


def test_tutorial_11_blank_copy_runs_and_scores_zero(tmp_path):
    r = subprocess.run([sys.executable, "-m", "minimoe.exercises.blank", str(TUTORIAL), str(tmp_path / "my_11.py")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "my_11.py").read_text()
    assert not any(l.strip() == "# BEGIN SOLUTION" for l in text.splitlines()) and text.count('raise NotImplementedError("your code here")') == 7
    env = dict(os.environ, MINIMOE_FAST="1", MINIMOE_TUTORIAL_OUT=str(tmp_path), MPLBACKEND="Agg",
               PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "my_11.py"], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "0/8 steps match minimoe" in r.stdout and r.stdout.count("not written yet") == 8


def test_blank_refuses_unbalanced_markers():
    assert blank("a\n    # BEGIN SOLUTION\n    x = 1\n    # END SOLUTION\nb\n") == \
        'a\n    raise NotImplementedError("your code here")\nb\n'
    with pytest.raises(MinimoeError, match="never closed"):
        blank("# BEGIN SOLUTION\nx\n")
    with pytest.raises(MinimoeError, match="without a BEGIN"):
        blank("x\n# END SOLUTION\n")
