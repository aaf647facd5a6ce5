"""Crash tests for minimoe's write paths: kill the process before each file operation, then check
that what is on disk is still a good checkpoint.

A "file operation" is any call that changes the file system: open() for writing, os.open with a
write flag, os.replace/rename/unlink/remove/rmdir/mkdir/makedirs/chmod, shutil.rmtree and the
safetensors package's save_file. `install(kill_at=k)` wraps them all (by monkeypatching, so the
library needs no hook) and kills the process with SIGKILL just before the k-th one; with
mode="interrupt" it raises KeyboardInterrupt there instead (Ctrl-C: `finally` blocks run).

A scenario is three functions:
    setup(dir)        make the starting state (a run with a good checkpoint, a saved model)
    action(dir)       the write under test (continue training, save a model over the old one)
    check(dir, ref)   after the crash: raise AssertionError if the last good state is lost,
                      e.g. if the latest checkpoint does not load or a resume is not bit-exact

`run_scenario(name, workdir)` does setup once, counts the operations of `action` in a forked
child, then for every k forks a child that copies the starting state, runs the action and is
killed before operation k; the parent runs `check` on what the child left. Each child is a fork,
so the whole matrix costs one import. Run from the command line (the tests do this in a fresh
process, so that the forks do not inherit pytest's threads):

    python tests/reliability/faults.py SCENARIO WORKDIR [--mode kill|interrupt] [--every N]

It prints one JSON object: {"ops": N, "labels": [...], "results": [{"k", "label", "ok", "why"}]}.
It uses only public API that minimoe has had since its first checkpoints, so
tests/reliability/sweep.py can run it against an older checkout too.
"""
from __future__ import annotations

import builtins
import json
import os
import shutil
import signal
import sys
import traceback

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class Injector:
    """Counts file operations; kills (or interrupts) the process before operation number kill_at."""

    def __init__(self, kill_at: int | None = None, mode: str = "kill"):
        self.kill_at, self.mode = kill_at, mode
        self.labels: list[str] = []
        self.originals: list = []

    def hit(self, label: str) -> None:
        self.labels.append(label)
        if self.kill_at is not None and len(self.labels) == self.kill_at:
            if self.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise KeyboardInterrupt(f"injected before file operation {self.kill_at}: {label}")

    def wrap(self, owner, name: str, is_write=lambda *a, **k: True) -> None:
        original = getattr(owner, name)
        injector = self

        def wrapper(*args, **kwargs):
            if is_write(*args, **kwargs):
                first = os.fspath(args[0]) if args and isinstance(args[0], (str, bytes, os.PathLike)) else ""
                injector.hit(f"{name} {os.path.basename(str(first))}")
            return original(*args, **kwargs)

        self.originals.append((owner, name, original))
        setattr(owner, name, wrapper)

    def install(self) -> "Injector":
        def open_writes(file, mode="r", *a, **k):
            return isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+")

        def os_open_writes(path, flags, *a, **k):
            return bool(flags & WRITE_FLAGS)

        self.wrap(builtins, "open", open_writes)
        self.wrap(os, "open", os_open_writes)
        for name in ("replace", "rename", "unlink", "remove", "rmdir", "mkdir", "makedirs", "chmod",
                     "symlink", "link", "truncate"):
            self.wrap(os, name)
        self.wrap(shutil, "rmtree")
        try:
            import safetensors.numpy
            self.wrap(safetensors.numpy, "save_file")
        except ImportError:
            pass
        return self

    def uninstall(self) -> None:
        for owner, name, original in reversed(self.originals):
            setattr(owner, name, original)
        self.originals = []


# ------------------------------------------------------------------------------------------------
# Scenarios
# ------------------------------------------------------------------------------------------------

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(300))


def train_config(out: str, max_iters: int):
    from minimoe.train.loop import TrainConfig
    return TrainConfig(preset="tiny-moe", data=os.path.join(os.path.dirname(out), "text.txt"), out=out,
                       max_iters=max_iters, batch_size=2, block_size=8, eval_interval=0, eval_iters=1,
                       ckpt_interval=2, sample_tokens=0, warmup_iters=2, lr_decay_iters=4, threads=1)


def params_of(model) -> dict:
    return {k: (v.blocks if hasattr(v, "blocks") else v).copy() for k, v in model.params.items()}


def same(a: dict, b: dict) -> bool:
    import numpy as np
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def leftovers(folder: str) -> list[str]:
    """Temporary files or folders (ours or an older minimoe's) anywhere under `folder`."""
    found = []
    for root, dirs, files in os.walk(folder):
        for n in dirs + files:
            if n.endswith(".tmp") or n.startswith(".tmp") or ".tmp-" in n or n.endswith(".old"):
                found.append(os.path.relpath(os.path.join(root, n), folder))
    return found


def _resume_to_end(run: str, max_iters: int = 4):
    from minimoe.train.loop import Trainer
    t = Trainer.resume(run, verbose=False, max_iters=max_iters)
    t.run()
    return t


def _check_training(run: str, ref: dict, allow_no_checkpoint: bool) -> None:
    """The newest checkpoint loads; resuming from it to step 4 gives the reference parameters bit for
    bit; afterwards no temporary file is left behind."""
    import minimoe
    from minimoe.errors import CheckpointError
    from minimoe.train.loop import latest_checkpoint
    if allow_no_checkpoint and not os.path.exists(os.path.join(run, "checkpoint", "LATEST")):
        return                                     # killed before the first checkpoint: nothing to lose
    try:
        ckpt = latest_checkpoint(run)
    except CheckpointError as e:
        raise AssertionError(f"no loadable checkpoint: {e}") from None
    minimoe.load(ckpt)
    t = _resume_to_end(run)
    assert t.step == 4, f"resumed run ended at step {t.step}"
    assert same(params_of(t.model), ref["final"]), "resume is not bit-exact"
    assert same(params_of(minimoe.load(run)), ref["final"]), "the run folder's model is not the final one"
    left = leftovers(run)
    assert not left, f"temporary files left after the next save: {left}"


def _reference(work: str) -> dict:
    """The parameters an uninterrupted 4-step run ends with."""
    from minimoe.train.loop import Trainer
    out = os.path.join(work, "reference")
    t = Trainer.new(train_config(out, 4), verbose=False)
    t.run()
    return {"final": params_of(t.model)}


class FirstCheckpoint:
    """A new run, killed anywhere before or during its first checkpoint (step 2) and the rest."""

    def setup(self, work: str) -> None:
        os.makedirs(os.path.join(work, "state"), exist_ok=True)

    def action(self, run: str) -> None:
        from minimoe.train.loop import Trainer
        Trainer.new(train_config(run, 4), verbose=False).run()

    def check(self, run: str, ref: dict) -> None:
        _check_training(run, ref, allow_no_checkpoint=True)


class Resumed:
    """A run with a good checkpoint at step `done`, resumed to step 4 and killed while it saves.
    done=2: a later checkpoint; done=4: the same step checkpointed again (--max-iters 4 again)."""

    def __init__(self, done: int):
        self.done = done

    def setup(self, work: str) -> None:
        from minimoe.train.loop import Trainer
        Trainer.new(train_config(os.path.join(work, "state"), self.done), verbose=False).run()

    def action(self, run: str) -> None:
        _resume_to_end(run)

    def check(self, run: str, ref: dict) -> None:
        _check_training(run, ref, allow_no_checkpoint=False)


class ModelOverModel:
    """A model folder overwritten by another model (a different config, quantized weights, no
    tokenizer): afterwards it must load as exactly the old model or exactly the new one."""

    def models(self):
        import minimoe
        from minimoe.tokenizer import CharTokenizer
        old = minimoe.Model(minimoe.Config.preset("tiny-moe", vocab_size=20), seed=1,
                            tokenizer=CharTokenizer("abcdefghijklmnopqrst"))
        new = minimoe.quantize(minimoe.Model(minimoe.Config.preset("tiny", vocab_size=24), seed=2), "q4_0")
        return old, new

    def setup(self, work: str) -> None:
        old, _ = self.models()
        old.save(os.path.join(work, "state"))

    def action(self, folder: str) -> None:
        _, new = self.models()
        new.save(folder)

    def check(self, folder: str, ref: dict) -> None:
        import minimoe
        old, new = self.models()
        m = minimoe.load(folder)
        got = params_of(m)
        if same(got, params_of(old)):
            assert m.config == old.config and m.tokenizer is not None, "old weights with a new config or tokenizer"
        elif same(got, params_of(new)):
            assert m.config == new.config and m.tokenizer is None, "new weights with an old config or tokenizer"
        else:
            raise AssertionError("the folder holds neither the old model nor the new one")
        left = leftovers(folder)
        assert not left, f"temporary files left after the next load: {left}"


class OneFile:
    """One file (a config.json) written over an older one: afterwards it holds the old or the new
    text, whole; the next write of it removes what the killed one left."""

    def configs(self):
        import minimoe
        return minimoe.Config.preset("tiny-moe"), minimoe.Config.preset("tiny", vocab_size=24)

    def setup(self, work: str) -> None:
        self.configs()[0].save(os.path.join(work, "state", "config.json"))

    def action(self, folder: str) -> None:
        self.configs()[1].save(os.path.join(folder, "config.json"))

    def check(self, folder: str, ref: dict) -> None:
        import minimoe
        got = minimoe.Config.load(os.path.join(folder, "config.json"))
        assert got in self.configs(), "neither the old config nor the new one"
        got.save(os.path.join(folder, "config.json"))
        left = leftovers(folder)
        assert not left, f"temporary files left after the next write: {left}"


SCENARIOS = {"one-file": OneFile, "first-checkpoint": FirstCheckpoint, "later-checkpoint": lambda: Resumed(2),
             "same-step-again": lambda: Resumed(4), "model-over-model": ModelOverModel}


# ------------------------------------------------------------------------------------------------
# The driver
# ------------------------------------------------------------------------------------------------

def _in_child(fn) -> int:
    """Run fn() in a forked child; return its exit status (negative: killed by that signal)."""
    sys.stdout.flush(), sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except BaseException:                      # an interrupt, or a clear error after it
            code = 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def run_scenario(name: str, work: str, mode: str = "kill", every: int = 1) -> dict:
    scenario = SCENARIOS[name]()
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(work, "text.txt"), "w", encoding="utf-8") as f:
        f.write(TEXT)
    ref = _reference(work) if name.endswith("checkpoint") or name == "same-step-again" else {}
    scenario.setup(work)
    state = os.path.join(work, "state")

    # count the action's file operations (in a child, on a copy)
    labels_file = os.path.join(work, "labels.json")

    def count():
        trial = os.path.join(work, "count")
        shutil.copytree(state, trial)
        inj = Injector().install()
        try:
            scenario.action(trial)
        finally:
            inj.uninstall()
            with open(labels_file, "w") as f:
                json.dump(inj.labels, f)

    status = _in_child(count)
    with open(labels_file) as f:
        labels = json.load(f)
    if status != 0:
        return {"ops": len(labels), "labels": labels, "error": f"the action itself failed ({status})",
                "results": []}

    results = []
    for k in range(1, len(labels) + 1, every):
        run = os.path.join(work, f"k{k:03d}")
        shutil.copytree(state, run)

        def act(run=run, k=k):
            inj = Injector(kill_at=k, mode=mode).install()
            scenario.action(run)
            inj.uninstall()

        status = _in_child(act)
        try:
            scenario.check(run, ref)
            ok, why = True, ""
        except BaseException as e:                 # AssertionError, or an error loading
            ok, why = False, f"{type(e).__name__}: {e}"[:300]
        results.append({"k": k, "label": labels[k - 1], "status": status, "ok": ok, "why": why})
        shutil.rmtree(run, ignore_errors=True)
    return {"ops": len(labels), "labels": labels, "results": results}


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("workdir")
    p.add_argument("--mode", choices=("kill", "interrupt"), default="kill")
    p.add_argument("--every", type=int, default=1, help="try every N-th operation only")
    args = p.parse_args(argv)
    out = run_scenario(args.scenario, args.workdir, args.mode, args.every)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
