"""Time minimoe's shakespeare-dense training step against nanoGPT's, on this machine, taking turns.

Needs torch (not a minimoe dependency; CI does not run this).

    python tests/benchmarks/compare_with_nanogpt.py --data ../shared/data/tinyshakespeare.txt [--rounds 10 --steps 50]

Two worker processes, one training minimoe (`minimoe.train.Trainer`, its default threads) and
one training the nanoGPT recipe of nanogpt_cpu_recipe.py (PyTorch eager, 2 threads unless
--torch-threads), take turns:
each runs `--steps` training steps while the other waits, for `--rounds` rounds. On a shared
machine the load changes from minute to minute. Taking turns makes both see the same
conditions, so their ratio means something even when the absolute times do not. Each
process keeps its own thread pool between turns, as it would in a real run.

Prints each side's median ms per step over the rounds, the min, and the ratio. With
`--threads 1 --torch-threads 1` it compares one core against one core, which no other process
can distort much: neither side then spin-waits on a second thread.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time


def minimoe_worker(go, done, times, args):
    from minimoe.train.loop import TrainConfig, Trainer, keep_freed_memory
    from minimoe.train.parallel import blas_threads
    keep_freed_memory()
    t = Trainer.new(TrainConfig(preset="shakespeare-dense", data=args.data, max_iters=2000, out=args.out,
                                **({"threads": args.threads} if args.threads else {})), verbose=False)
    with blas_threads(1):                                # as `minimoe train` runs its steps
        for _ in range(3):
            t.train_step()
        for _ in range(args.rounds):
            go.wait()
            go.clear()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                t.train_step()
            times.append((time.perf_counter() - t0) / args.steps * 1e3)
            done.set()


def nanogpt_worker(go, done, times, args):
    import importlib.util
    import torch
    spec = importlib.util.spec_from_file_location(
        "nanogpt_cpu_recipe", os.path.join(os.path.dirname(os.path.abspath(__file__)), "nanogpt_cpu_recipe.py"))
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(1337)
    text = open(args.data, encoding="utf-8").read()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([index[c] for c in text[: int(0.9 * len(text))]], dtype=torch.long)
    model = ref.GPT(len(chars), 64)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))

    def step(it):
        for g in opt.param_groups:
            g["lr"] = ref.get_lr(it)
        ix = torch.randint(len(data) - 64, (12,))
        x = torch.stack([data[i:i + 64] for i in ix])
        y = torch.stack([data[i + 1:i + 65] for i in ix])
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    it = 0
    for _ in range(3):
        step(it)
        it += 1
    for _ in range(args.rounds):
        go.wait()
        go.clear()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(it)
            it += 1
        times.append((time.perf_counter() - t0) / args.steps * 1e3)
        done.set()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0, help="minimoe's --threads (default: its own default)")
    ap.add_argument("--torch-threads", type=int, default=2, help="torch.set_num_threads for nanoGPT (default 2)")
    ap.add_argument("--out", default=os.path.join("runs", "compare-with-nanogpt"))
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    sides = {}
    for name, fn in (("minimoe", minimoe_worker), ("nanogpt", nanogpt_worker)):
        go, done, times = ctx.Event(), ctx.Event(), manager.list()
        proc = ctx.Process(target=fn, args=(go, done, times, args))   # not a daemon: minimoe forks its shards
        proc.start()
        sides[name] = (proc, go, done, times)
    for r in range(args.rounds):
        for name, (proc, go, done, times) in sides.items():
            go.set()
            while not done.wait(1.0):
                if not proc.is_alive():
                    sys.exit(f"the {name} worker died")
            done.clear()
        print(f"round {r + 1}: " + ", ".join(f"{n} {s[3][-1]:.1f} ms/step" for n, s in sides.items()), flush=True)
    result = {}
    for name, (proc, _, _, times) in sides.items():
        proc.join()
        t = list(times)
        result[name] = {"median_ms_per_step": round(statistics.median(t), 2), "min_ms_per_step": round(min(t), 2),
                        "rounds": [round(v, 2) for v in t]}
    result["ratio_median"] = round(result["minimoe"]["median_ms_per_step"] / result["nanogpt"]["median_ms_per_step"], 3)
    result["ratio_min"] = round(result["minimoe"]["min_ms_per_step"] / result["nanogpt"]["min_ms_per_step"], 3)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
