"""minimoe.exercises: every grader fails on its stub and passes on the library's own solution, and
a plausible mistake fails with a message that says where."""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from minimoe.exercises import EXERCISES, GRADERS, REFERENCES, stub_path
from minimoe.exercises.grade import load_exercise, run_grader


@pytest.mark.parametrize("name", list(EXERCISES))
def test_the_stub_fails(name):
    loaded, fn = load_exercise(stub_path(name))
    assert loaded == name
    checks = run_grader(name, fn)
    assert checks and not any(c.passed for c in checks)
    assert "not written yet" in checks[0].detail


@pytest.mark.parametrize("name", list(EXERCISES))
def test_the_reference_passes(name):
    checks = run_grader(name, REFERENCES[name])
    assert len(checks) >= 1 and all(c.passed for c in checks), [c for c in checks if not c.passed]


def test_a_backward_pass_missing_a_term_fails_by_finite_differences():
    def rmsnorm_backward(dy, xhat, rstd, weight):        # forgets that rstd depends on x
        return dy * weight * rstd, (dy * xhat).reshape(-1, xhat.shape[-1]).sum(0)
    checks = run_grader("rmsnorm_backward", rmsnorm_backward)
    by = {c.name: c for c in checks}
    assert not by["rmsnorm: dx"].passed and by["rmsnorm: dweight"].passed
    assert "relative error" in by["rmsnorm: dx"].detail


def test_q4_0_truncating_without_the_half_fails_byte_for_byte():
    from minimoe.quant import q4_0

    def q4_0_pack(x):                                    # trunc(x/d + 8), forgetting the + 0.5
        ref = q4_0.quantize_blocks(x)
        d = x[np.arange(len(x)), np.abs(x).argmax(1)] / -8
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.clip(np.trunc(np.where(d[:, None] == 0, 0, x / d[:, None]) + 8), 0, 15).astype(np.uint8)
        return np.concatenate([ref[:, :2], q4_0.pack_nibbles(q)], axis=1)
    checks = run_grader("q4_0_pack", q4_0_pack)
    failed = [c for c in checks if not c.passed]
    assert failed and "bytes differ" in failed[0].detail and "nibble byte" in failed[0].detail


def test_a_decode_step_without_the_new_key_fails():
    from minimoe.nn.attention import attend

    def kv_cache_decode(q, k, v, k_cache, v_cache):      # attends before appending: misses itself
        y = attend(q, k_cache, v_cache, 0, None)[0] if k_cache.shape[2] else np.zeros_like(q)
        return y, np.concatenate([k_cache, k], 2), np.concatenate([v_cache, v], 2)
    checks = run_grader("kv_cache_decode", kv_cache_decode)
    assert not all(c.passed for c in checks)


def test_the_grader_reports_an_exception_in_the_students_code(tmp_path):
    path = tmp_path / "top_k_routing.py"
    path.write_text('EXERCISE = "top_k_routing"\n\n\ndef top_k_routing(logits, K):\n    return 1 / 0\n')
    checks = run_grader(*load_exercise(str(path)))
    assert len(checks) == 1 and "ZeroDivisionError" in checks[0].detail
    assert "(at top_k_routing.py:5)" in checks[0].detail


def test_minimoe_grade_cli_start_then_grade(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    run = lambda *a: subprocess.run([sys.executable, "-m", "minimoe.cli", "grade", *a], capture_output=True,
                                    text=True, env=env, cwd=tmp_path, timeout=120)
    r = run("--start", "load_balancing_loss")
    assert r.returncode == 0 and (tmp_path / "load_balancing_loss.py").exists()
    r = run("load_balancing_loss.py")
    assert r.returncode == 1 and "score: 0/1" in r.stdout
    path = tmp_path / "load_balancing_loss.py"
    path.write_text(path.read_text().replace(
        '    raise NotImplementedError("write the load-balancing loss")',
        "    E = probs.shape[1]\n"
        "    f = np.bincount(experts.ravel(), minlength=E) / len(probs)\n"
        "    return float(E * np.sum(f * probs.mean(axis=0)))"))
    r = subprocess.run([sys.executable, "-m", "minimoe.exercises.grade", "load_balancing_loss.py"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and "score: 4/4  all checks pass" in r.stdout, r.stdout + r.stderr
    r = run("nonexistent.py")
    assert r.returncode == 1 and "no such file" in r.stderr
