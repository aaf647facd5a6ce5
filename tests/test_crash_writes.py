"""Crash tests of every write path: the process is killed (SIGKILL) before each file operation of a
save, then the last good checkpoint must load and a resume must be bit-exact (tests/reliability/
faults.py does the killing; each scenario runs in a fresh process, which forks once per kill point).

    first-checkpoint   a new run, killed anywhere up to and through its first checkpoints
    later-checkpoint   a run with a checkpoint at step 2, killed while it saves step 4
    same-step-again    a finished run resumed with --max-iters at its own step: step 4 saved twice
    model-over-model   Model.save over a folder holding another model (quantized, no tokenizer)
    one-file           one file (Config.save) over an older one: the atomic_path of every other
                       single-file write (metrics.json, traces, plots, the data cache)

Every scenario is killed before every one of its operations (280 kills, about 30 s on 2 cores);
MINIMOE_FUZZ=long also interrupts them there (Ctrl-C: a KeyboardInterrupt) instead of killing.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAULTS = os.path.join(ROOT, "tests", "reliability", "faults.py")
LONG = os.environ.get("MINIMOE_FUZZ", "") == "long"
SCENARIOS = ["first-checkpoint", "later-checkpoint", "same-step-again", "model-over-model", "one-file"]
MODES = ["kill", "interrupt"] if LONG else ["kill"]


def run_scenario(name: str, work, mode: str) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, FAULTS, name, str(work), "--mode", mode],
                       capture_output=True, text=True, env=env, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", SCENARIOS)
def test_a_crash_at_any_file_operation_loses_nothing(name, mode, tmp_path):
    out = run_scenario(name, tmp_path, mode)
    assert "error" not in out, out.get("error")
    assert out["ops"] >= 4 and out["results"], "the save did no file operations?"
    killed = [r for r in out["results"] if r["status"] == (-9 if mode == "kill" else 3)]
    assert len(killed) == len(out["results"]), "some runs were not interrupted where asked"
    bad = [f"before op {r['k']} ({r['label']}): {r['why']}" for r in out["results"] if not r["ok"]]
    assert not bad, "\n".join(bad[:10])


def test_the_crash_test_catches_a_non_atomic_save(tmp_path, monkeypatch):
    """The harness itself: a save that deletes the old folder before writing the new one must fail
    the check (a crash test that cannot fail would prove nothing)."""
    sys.path.insert(0, os.path.dirname(FAULTS))
    import faults

    import minimoe
    from minimoe.io import checkpoint

    def careless_save(model, folder):                    # what "atomic" must not be
        import shutil
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        model.config.save(os.path.join(folder, "config.json"))
        checkpoint.write_safetensors(os.path.join(folder, "model.safetensors"),
                                     {k: v.blocks if hasattr(v, "blocks") else v for k, v in model.params.items()},
                                     {"format": "minimoe", checkpoint.QUANT_KEY: json.dumps(
                                         {k: {"fmt": v.fmt, "shape": list(v.shape)} for k, v in model.params.items()
                                          if hasattr(v, "blocks")})})

    monkeypatch.setattr(minimoe.Model, "save", lambda self, folder: careless_save(self, folder))
    out = faults.run_scenario("model-over-model", str(tmp_path))
    assert any(not r["ok"] for r in out["results"])
