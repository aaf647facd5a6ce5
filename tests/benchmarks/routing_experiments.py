"""Dense against MoE, and five ways to balance an MoE's router, trained on tinyshakespeare.

This is an experiment, not a test: it trains one model per (setting, seed), then writes a results
table and a figure (docs/experiments.md shows them). The defaults are the full protocol of issue 18:

    python tests/benchmarks/routing_experiments.py --data /work/shared/data/tinyshakespeare.txt

    settings   dense            shakespeare-dense, d_ff 344: the MoE's active parameters and FLOPs
               dense-wide       d_ff 1376: the MoE's total parameters
               moe-none         shakespeare-moe (8 experts of 172, top-2), no balancing at all
               moe-aux          load-balancing loss 0.01
               moe-aux-z        load-balancing loss 0.01 + router z-loss 0.001 (minimoe's default)
               moe-loss-free    DeepSeek-V3's selection bias, gamma 0.001, no auxiliary loss
               moe-cap-1.0      aux + z, capacity factor 1.0 (training and evaluation)
               moe-cap-1.25     aux + z, capacity factor 1.25
    protocol   2000 iterations, batch 12 x 64, seeds 1, 2, 3; everything else minimoe train's defaults

Each run is a `minimoe train` run folder under --out (a finished one is not run again, so the script
can be stopped and restarted). Then, per setting, over the seeds: the final val loss (mean and
spread), the busiest and idlest expert's share of the top-k assignments on val (min and max over
layers), dead experts (an expert with less than a tenth of the even share, 1.25% for 8 experts,
in some layer), the dropped tokens, the forward FLOPs per token (measured by minimoe.trace on one
training-mode batch, capacity padding included) and the wall time.

    --iters N --seeds 1,2      a shorter protocol (say so when you quote the numbers)
    --settings dense,moe-none  a subset
    --report                   only rebuild the table and figure from the finished runs
    --speed                    instead: time training steps of every setting interleaved in one
                               process (rounds of 10 steps each), so that their ratios are fair
                               on a machine whose load changes
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

SETTINGS = {
    "dense": dict(preset="shakespeare-dense"),
    "dense-wide": dict(preset="shakespeare-dense", model={"d_ff": 1376}),
    "moe-none": dict(aux_loss_coef=0.0, z_loss_coef=0.0),
    "moe-aux": dict(aux_loss_coef=0.01, z_loss_coef=0.0),
    "moe-aux-z": dict(aux_loss_coef=0.01, z_loss_coef=0.001),
    "moe-loss-free": dict(aux_loss_coef=0.0, z_loss_coef=0.0, bias_update_rate=0.001),
    "moe-cap-1.0": dict(model={"capacity_factor": 1.0, "eval_capacity_factor": 1.0}),
    "moe-cap-1.25": dict(model={"capacity_factor": 1.25, "eval_capacity_factor": 1.25}),
}
DEAD = 0.1          # an expert is dead in a layer if it gets less than DEAD x the even share


def run_one(name: str, seed: int, args) -> dict:
    """Train (setting, seed) unless its folder holds a finished run; return its metrics."""
    from minimoe.train.loop import TrainConfig, Trainer
    out = os.path.join(args.out, f"{name}-seed{seed}")
    path = os.path.join(out, "metrics.json")
    if os.path.exists(path):
        m = json.load(open(path))
        if m.get("status") == "finished" and m.get("iters") == args.iters:
            return m
    s = dict(SETTINGS[name])
    tc = TrainConfig(preset=s.pop("preset", "shakespeare-moe"), data=args.data, out=out, seed=seed,
                     max_iters=args.iters, eval_interval=max(args.iters // 4, 1), ckpt_interval=0,
                     sample_tokens=0, threads=args.threads, **s)
    t0 = time.time()
    metrics = Trainer.new(tc, verbose=False).run()
    print(f"  {name} seed {seed}: val {metrics['val_loss']:.4f} in {time.time() - t0:.0f} s", flush=True)
    return metrics


def flops_per_token(metrics: dict) -> float:
    """Forward FLOPs per token of the run's model, traced on one training-mode batch of 12 x 64."""
    import minimoe
    from minimoe.config import Config
    cfg = Config.from_dict(metrics["model_config"])
    model = minimoe.Model(cfg, seed=0)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(12, 64))
    with minimoe.trace() as t:
        model.forward(tokens, train=True)
    return t.per_token()["flops"]


def summarize(name: str, runs: list[dict]) -> dict:
    vals = np.array([m["val_loss"] for m in runs])
    row = {"setting": name, "seeds": len(runs), "val_mean": float(vals.mean()),
           "val_std": float(vals.std(ddof=1)) if len(runs) > 1 else 0.0,
           "params": runs[0]["params"], "active": runs[0]["active_params"],
           "wall_s": float(np.mean([m["wall_s"] for m in runs])),
           "ms_per_iter": float(np.mean([m["ms_per_iter"] for m in runs])),
           "flops_per_token": flops_per_token(runs[0]),
           "curve": _mean_curve(runs)}
    loads = [[l for l in m["expert_load"] or [] if l is not None] for m in runs]
    if loads[0]:
        E = len(loads[0][0])
        row["max_load"] = float(np.mean([max(max(l) for l in ls) for ls in loads]))
        row["min_load"] = float(np.mean([min(min(l) for l in ls) for ls in loads]))
        row["dead"] = float(np.mean([sum(sum(x < DEAD / E for x in l) for l in ls) for ls in loads]))
        drop = [m["history"][-1].get("dropped_tokens") for m in runs]
        row["dropped_tokens"] = None if drop[0] is None else float(np.mean(drop))
    return row


def _mean_curve(runs: list[dict]) -> list:
    """(iter, mean val loss) over the seeds, at the evaluations every run has."""
    by_iter: dict = {}
    for m in runs:
        for h in m["history"]:
            by_iter.setdefault(h["iter"], []).append(h["val_loss"])
    return [(i, float(np.mean(v))) for i, v in sorted(by_iter.items()) if len(v) == len(runs)]


def table(rows: list[dict]) -> str:
    head = ("| setting | params (active) | fwd FLOPs/token | val loss (mean ± sd) | max load | min load "
            "| dead experts | dropped tokens | wall time |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        moe = "max_load" in r
        cells = [r["setting"], f"{r['params'] / 1e3:.0f}k ({r['active'] / 1e3:.0f}k)",
                 f"{r['flops_per_token'] / 1e6:.3f} M", f"{r['val_mean']:.4f} ± {r['val_std']:.4f}",
                 f"{100 * r['max_load']:.1f}%" if moe else "–", f"{100 * r['min_load']:.1f}%" if moe else "–",
                 f"{r['dead']:.1f}" if moe else "–",
                 "–" if not moe or r["dropped_tokens"] is None else f"{100 * r['dropped_tokens']:.2f}%",
                 f"{r['wall_s']:.0f} s ({r['ms_per_iter']:.0f} ms/iter)"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(rows: list[dict], path: str) -> str:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for r in rows:
        it, v = zip(*r["curve"][1:]) if len(r["curve"]) > 1 else ([], [])
        ax1.plot(it, v, marker=".", label=r["setting"], ls="--" if r["setting"].startswith("dense") else "-")
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("val loss (nats/char), mean over seeds")
    ax1.set_title("validation loss")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    moe = [r for r in rows if "max_load" in r]
    x = np.arange(len(moe))
    ax2.bar(x - 0.2, [100 * r["max_load"] for r in moe], 0.4, label="busiest expert")
    ax2.bar(x + 0.2, [100 * r["min_load"] for r in moe], 0.4, label="idlest expert")
    if moe:
        ax2.axhline(100 / 8, color="#444444", lw=0.8, ls=":", label="even (12.5%)")
    ax2.set_xticks(x, [r["setting"] for r in moe], rotation=30, ha="right")
    ax2.set_ylabel("share of top-k assignments on val (%)")
    ax2.set_title("expert load, worst layer (mean over seeds)")
    ax2.legend(fontsize=8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def speed(names: list[str], args, rounds: int = 5, steps: int = 10) -> str:
    """Median ms per training step of each setting, measured in interleaved rounds in this
    process (each after 3 warm-up steps), and the ratio to the first setting."""
    from minimoe.train.loop import TrainConfig, Trainer
    trainers = {}
    for name in names:
        s = dict(SETTINGS[name])
        tc = TrainConfig(preset=s.pop("preset", "shakespeare-moe"), data=args.data, seed=1, max_iters=10**6,
                         threads=args.threads, out=os.path.join(args.out, "speed", name), **s)
        t = Trainer.new(tc, verbose=False)
        for _ in range(3):
            t.train_step()
        trainers[name] = t
    times = {n: [] for n in names}
    for _ in range(rounds):
        for name, t in trainers.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                t.train_step()
            times[name].append(1e3 * (time.perf_counter() - t0) / steps)
    base = float(np.median(times[names[0]]))
    lines = [f"| setting | ms per step (median of {rounds} rounds of {steps}) | vs {names[0]} |", "|---|---|---|"]
    for n in names:
        m = float(np.median(times[n]))
        lines.append(f"| {n} | {m:.0f} | {m / base:.2f}x |")
    lines += ["", "one 12 x 64 training batch in this process (no shards), ms, median of 5:", "",
              "| setting | forward | backward | AdamW step |", "|---|---|---|---|"]
    for name, t in trainers.items():
        fwd, bwd, opt = phase_times(t)
        lines.append(f"| {name} | {fwd:.1f} | {bwd:.1f} | {opt:.1f} |")
    lines += ["", "forward pass of one 12 x 64 training batch, traced (minimoe.trace), ms by kind of op "
              "(median of 5):", "", "| setting | " + " | ".join(KINDS) + " | total |",
              "|---|" + "---|" * (len(KINDS) + 1)]
    for name, t in trainers.items():
        by_kind = forward_breakdown(t.model)
        lines.append(f"| {name} | " + " | ".join(f"{by_kind.get(k, 0.0):.1f}" for k in KINDS)
                     + f" | {sum(by_kind.values()):.1f} |")
        t.shards.close()
    return "\n".join(lines)


def phase_times(trainer, repeat: int = 5) -> tuple[float, float, float]:
    """(forward, backward, AdamW) ms of one training batch, run in this process, median of `repeat`.
    The AdamW step is timed on a copy of the parameters, so the run is not changed."""
    from minimoe.nn import loss
    from minimoe.train.optim import AdamW
    model = trainer.model
    x, y = trainer.data.batch("train", 12, 64, np.random.default_rng(0))
    params = {k: v.copy() for k, v in model.params.items()}
    opt = AdamW(params)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        logits, cache = model.forward(x, train=True)
        t1 = time.perf_counter()
        _, ce_cache = loss.forward(logits, y)
        grads = model.backward(loss.backward(1.0, ce_cache), cache)
        t2 = time.perf_counter()
        opt.step(grads, 1e-4)
        times.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
    return tuple(1e3 * float(np.median([t[i] for t in times])) for i in range(3))


KINDS = ("matmul", "attention", "softmax", "activation", "norm", "rope", "route", "dispatch", "combine",
         "embedding")


def forward_breakdown(model, repeat: int = 5) -> dict:
    """{kind: ms} of one training-mode forward pass over a 12 x 64 batch (median over `repeat`)."""
    import minimoe
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, size=(12, 64))
    runs = []
    for _ in range(repeat):
        with minimoe.trace() as t:
            model.forward(tokens, train=True)
        runs.append({k: 1e3 * g["time_s"] for k, g in t.group("kind").items()})
    return {k: float(np.median([r.get(k, 0.0) for r in runs])) for k in runs[0]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/work/shared/data/tinyshakespeare.txt")
    p.add_argument("--out", default="runs/routing_experiments", help="folder of the run folders")
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--threads", type=int, default=0, help="shards per batch (0: one per core, up to 2)")
    p.add_argument("--figure", default="docs/figures/routing_experiments.png")
    p.add_argument("--report", action="store_true", help="only summarize the finished runs")
    p.add_argument("--speed", action="store_true", help="only time the settings' training steps, interleaved")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [n.strip() for n in args.settings.split(",")]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        p.error(f"unknown setting(s) {unknown}; known: {', '.join(SETTINGS)}")
    from minimoe.bench.timing import machine_info
    info = machine_info()
    print(f"{len(names)} settings x {len(seeds)} seeds, {args.iters} iterations each, on {info['cpu']} "
          f"({info['cores']} cores, load average {info['load_average_1min']:.1f})", flush=True)
    if args.speed:
        print(speed(names, args))
        return 0
    rows = []
    for name in names:
        runs = []
        for seed in seeds:
            path = os.path.join(args.out, f"{name}-seed{seed}", "metrics.json")
            if args.report:
                if os.path.exists(path) and json.load(open(path)).get("status") == "finished":
                    runs.append(json.load(open(path)))
            else:
                runs.append(run_one(name, seed, args))
        if runs:
            rows.append(summarize(name, runs))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"iters": args.iters, "seeds": seeds, "rows": rows}, f, indent=1)
    print(table(rows))
    print("figure:", figure(rows, args.figure))
    return 0


if __name__ == "__main__":
    sys.exit(main())
