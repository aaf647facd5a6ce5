#!/usr/bin/env python
"""A preset's generate() with int8 against float activations, interleaved in rounds (one process).

Shape legend: P prompt tokens, N new tokens.

Each round runs, for every recipe and activation precision (minimoe.set_activation_precision),
one generate() of N tokens after a P-token prompt, and the best round is kept: a machine whose
speed drifts moves every case alike. fp32 has no packed weights, so only "float".

    PYTHONPATH=$PWD python tests/benchmarks/int8_vs_float_decode.py [--preset mixtral-mini] [--rounds 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import minimoe
from minimoe.bench.timing import machine_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="mixtral-mini")
    ap.add_argument("--recipes", default="fp32,q8_0,q4_0")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cfg = minimoe.Config.preset(args.preset)
    model = minimoe.Model(cfg, seed=0)
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, args.prompt_tokens)    # (P,)
    models = {r: model if r == "fp32" else minimoe.quantize(model, r) for r in args.recipes.split(",")}
    best: dict = {}
    for _ in range(args.rounds):
        for recipe, m in models.items():
            for precision in ("float",) if recipe == "fp32" else ("float", "int8"):
                minimoe.set_activation_precision(precision)
                m.generate(prompt[:4], 2)                                   # warm-up (compiles once)
                t0 = time.perf_counter()
                m.generate(prompt, args.new_tokens)
                t = time.perf_counter() - t0
                best[recipe, precision] = min(t, best.get((recipe, precision), t))
    info = machine_info()
    print(f"{args.preset}: {args.prompt_tokens}-token prompt + {args.new_tokens} new tokens, best of "
          f"{args.rounds} rounds; {info['cpu']}, {info['cores']} cores")
    base = best["fp32", "float"] if ("fp32", "float") in best else None
    for (recipe, precision), t in best.items():
        vs = f"   {base / t:5.2f}x fp32" if base else ""
        print(f"  {recipe:<6}{precision:<7}{1e3 * t:8.0f} ms  {args.new_tokens / t:7.1f} tokens/s (incl. prefill){vs}")


if __name__ == "__main__":
    main()
