#!/usr/bin/env python
"""Two commits' speed, measured in one run, alternating, median of rounds (issue 11's rule: no
number may drop by more than 10%). Not collected by pytest; needs only this repository.

    python tests/benchmarks/compare_commits.py --before 90c10ec --after HEAD [--rounds 3]

For each commit it checks out a temporary worktree and runs, with that tree first on PYTHONPATH:
    minimoe bench decode --preset mixtral-mini --recipes fp32,q8_0,q4_0 --backends numba --json
    shakespeare-moe (random weights, seed 0) generating 200 tokens from a 3-token prompt, after a
    warm-up (past its 64-token context the model re-reads the window at every step)
and prints, per number, the median over rounds of each commit and after/before.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

GENERATE = """if True:
    import json, time, numpy as np, minimoe
    m = minimoe.Model(minimoe.Config.preset("shakespeare-moe"), seed=0)
    m.generate(np.array([1, 2, 3]), 70)
    t0 = time.perf_counter(); m.generate(np.array([1, 2, 3]), 200); dt = time.perf_counter() - t0
    print(json.dumps({"shakespeare-moe generate 200 tok/s": 200 / dt}))"""


def run(tree: str, args: list[str]) -> str:
    env = dict(os.environ, PYTHONPATH=tree)
    r = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, cwd=tree)
    if r.returncode:
        raise SystemExit(f"{tree}: {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    return r.stdout


def measure(tree: str, new_tokens: int) -> dict:
    out = json.loads(run(tree, ["-c", "from minimoe.cli import main; main()", "bench", "decode",
                                "--preset", "mixtral-mini", "--recipes", "fp32,q8_0,q4_0", "--backends",
                                "numba", "--new-tokens", str(new_tokens), "--quick-peaks", "--json"]))
    numbers = {}
    for recipe, r in out["results"].items():
        r = r.get("numba", r)
        numbers[f"mixtral-mini {recipe} prefill tok/s"] = r["prefill_tok_s"]
        numbers[f"mixtral-mini {recipe} decode tok/s"] = r["decode_tok_s"]
    numbers.update(json.loads(run(tree, ["-c", GENERATE]).strip().splitlines()[-1]))
    return numbers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default="HEAD")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=128)
    args = ap.parse_args()
    repo = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                          check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="minimoe-commits-") as tmp:
        trees = {}
        for label, rev in (("before", args.before), ("after", args.after)):
            trees[label] = os.path.join(tmp, label)
            subprocess.run(["git", "-C", repo, "worktree", "add", "--detach", "-q", trees[label], rev], check=True)
        try:
            for tree in trees.values():                  # compile and cache the kernels first
                measure(tree, 4)
            rounds = {label: [] for label in trees}
            for i in range(args.rounds):
                for label, tree in trees.items():
                    print(f"round {i + 1}: {label}", file=sys.stderr, flush=True)
                    rounds[label].append(measure(tree, args.new_tokens))
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", repo, "worktree", "remove", "--force", tree], check=False)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "unknown CPU") if os.path.exists("/proc/cpuinfo") else "unknown CPU"
    print(f"{args.before} -> {args.after}, median of {args.rounds} alternating rounds, {cpu}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'number':<42}{'before':>10}{'after':>10}{'after/before':>14}   (all rounds before | after)")
    for key in rounds["before"][0]:
        b = [r[key] for r in rounds["before"]]
        a = [r[key] for r in rounds["after"]]
        mb, ma = statistics.median(b), statistics.median(a)
        print(f"{key:<42}{mb:>10.1f}{ma:>10.1f}{ma / mb:>14.2f}   "
              f"{' '.join(f'{x:.0f}' for x in b)} | {' '.join(f'{x:.0f}' for x in a)}")


if __name__ == "__main__":
    main()
