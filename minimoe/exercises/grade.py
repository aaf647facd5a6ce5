"""Grade an exercise file: `python -m minimoe.exercises.grade FILE` (or `minimoe grade FILE`).

The file is run as a module (it is the student's own code, as a test runner would run it), its
`EXERCISE` names the grader, and the function of that name is graded. The score is the number of
checks passed; the exit code is 0 only when all of them pass.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import traceback

from minimoe.errors import MinimoeError
from minimoe.exercises import EXERCISES, GRADERS, REFERENCES, stub_path
from minimoe.exercises.graders import Check


class ExerciseError(MinimoeError):
    """An exercise file that cannot be graded: missing, no EXERCISE, or no function to grade."""


def load_exercise(path: str):
    """(name, function) from an exercise file."""
    if not os.path.isfile(path):
        raise ExerciseError(f"{path}: no such file (start one with `minimoe grade --start NAME`)")
    spec = importlib.util.spec_from_file_location("minimoe_exercise_under_grading", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    name = getattr(module, "EXERCISE", None)
    if name not in GRADERS:
        raise ExerciseError(f"{path}: EXERCISE must name one of {', '.join(GRADERS)}, found {name!r}")
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ExerciseError(f"{path}: exercise {name!r} expects a function named {name}")
    return name, fn


def run_grader(name: str, fn) -> list[Check]:
    """The grader's checks; an exception in the student's code is one failed check that shows it."""
    try:
        return GRADERS[name](fn)
    except NotImplementedError as e:
        return [Check(name, False, f"not written yet ({e})")]
    except Exception as e:   # the student's code raised: show where, as a failed check
        tb = traceback.extract_tb(e.__traceback__)
        own = getattr(getattr(fn, "__code__", None), "co_filename", None)   # the student's file
        frame = next((f for f in reversed(tb) if f.filename == own), tb[-1])
        return [Check(name, False, f"raised {type(e).__name__}: {e} "
                                   f"(at {os.path.basename(frame.filename)}:{frame.lineno})")]


def report(name: str, checks: list[Check]) -> str:
    passed = sum(c.passed for c in checks)
    lines = [f"{name}: {EXERCISES[name][0]}, graded by {EXERCISES[name][1]}"]
    lines += [f"  {'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}" for c in checks]
    lines.append(f"score: {passed}/{len(checks)}" + ("  all checks pass" if passed == len(checks) else ""))
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", help="the exercise file to grade")
    p.add_argument("--list", action="store_true", help="list the exercises and what grades each")
    p.add_argument("--start", metavar="NAME", help="copy exercise NAME's stub into the working directory")
    p.add_argument("--reference", metavar="NAME", help="grade minimoe's own solution of NAME (it must pass)")


def run(args) -> int:
    if args.list:
        for name, (topic, how) in EXERCISES.items():
            print(f"{name:22s} {topic}; graded by {how}")
        return 0
    if args.start:
        if args.start not in EXERCISES:
            raise ExerciseError(f"--start: unknown exercise {args.start!r}; `minimoe grade --list` names them")
        dest = os.path.join(os.getcwd(), f"{args.start}.py")
        if os.path.exists(dest):
            raise ExerciseError(f"--start: {dest} exists already; grade it, or move it away first")
        shutil.copyfile(stub_path(args.start), dest)
        print(f"wrote {dest}; fill in {args.start}(), then run: minimoe grade {args.start}.py")
        return 0
    if args.reference:
        if args.reference not in REFERENCES:
            raise ExerciseError(f"--reference: unknown exercise {args.reference!r}")
        name, fn = args.reference, REFERENCES[args.reference]
    elif args.file:
        name, fn = load_exercise(args.file)
    else:
        raise ExerciseError("give an exercise FILE to grade, --list, --start NAME or --reference NAME")
    checks = run_grader(name, fn)
    print(report(name, checks))
    return 0 if checks and all(c.passed for c in checks) else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minimoe.exercises.grade", description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except MinimoeError as e:
        print(f"grade: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
