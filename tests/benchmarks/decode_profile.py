#!/usr/bin/env python
"""Where a decode step's (or a prefill's) time goes: each kind of leaf's wall-clock time against the whole.

Shape legend: P prompt tokens.

mixtral-mini with random weights (seed 0), quantized by --recipe, a P-token prompt, then: a
warm-up, 100 decode steps untimed per leaf (ms per token), 100 more with every leaf call timed
(each kind's time per token: Leaf.__call__ wrapped with two perf_counter calls, which costs well
under a microsecond a call; minimoe.trace's bookkeeping would cost more), and the fixed price of
one matmul leaf call against its kernel. What the leaves do not cover is the Python between them.
--prefill does the same for the P-token prefill (best of 5 untimed, then one timed per leaf).

    PYTHONPATH=$PWD python tests/benchmarks/decode_profile.py [--recipe q4_0] [--prompt 256] [--prefill]
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np

import minimoe
from minimoe.bench.decode import build
from minimoe.bench.timing import best_time, machine_info
from minimoe.kernels.dispatch import Leaf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="q4_0")
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--prefill", action="store_true", help="profile the prompt's prefill instead")
    args = ap.parse_args()
    model = build("mixtral-mini", args.recipe, 0)
    prompt = np.random.default_rng(0).integers(0, model.config.vocab_size, args.prompt)
    model.generate(prompt, 2)                                       # warm-up
    kv = model.new_kv_cache(1, args.prompt + 300)
    nxt = model.forward(prompt[None], kv, last_only=True)[0][:, -1].argmax(-1)

    def steps(n: int) -> None:
        nonlocal nxt
        for _ in range(n):
            nxt = model.forward(nxt[:, None], kv)[0][:, -1].argmax(-1)

    info = machine_info()
    print(f"{info.get('cpu')}, {info.get('cores')} cores; mixtral-mini {args.recipe}, {args.prompt}-token prompt")
    if args.prefill:
        def run() -> None:
            model.forward(prompt[None], model.new_kv_cache(1, args.prompt + 1), last_only=True)
        whole, n = best_time(run, 5), 1
        what = f"prefill {whole * 1e3:.1f} ms ({args.prompt / whole:.0f} tok/s)"
    else:
        steps(5)
        n = 100
        t0 = time.perf_counter()
        steps(n)
        whole = (time.perf_counter() - t0) / n
        what = f"decode step {whole * 1e3:.2f} ms ({1 / whole:.1f} tok/s)"

        def run() -> None:
            steps(n)
    by_kind = defaultdict(float)
    plain = Leaf.__call__

    def timed(leaf, *a, name=None):
        t = time.perf_counter()
        out = plain(leaf, *a, name=name)
        by_kind[_kind(leaf.kind, name)] += time.perf_counter() - t
        return out

    Leaf.__call__ = timed
    try:
        t0 = time.perf_counter()
        run()
        timed_whole = (time.perf_counter() - t0) / n
    finally:
        Leaf.__call__ = plain
    leaves = sum(by_kind.values()) / n
    print(f"{what}; with every leaf timed {timed_whole * 1e3:.2f} ms, of which the leaves {leaves * 1e3:.2f} ms:")
    for kind, seconds in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<26}{seconds / n * 1e6:9.0f} us")
    if not args.prefill:
        leaf_overhead()


def _kind(kind: str, name) -> str:
    """A leaf call's label: its kind, and for matmuls what they multiply (names from nn/)."""
    if kind not in ("matmul", "matmuls"):
        return kind
    names = name if isinstance(name, tuple) else (name or "",)
    part = ("experts" if any(".experts" in n for n in names) else "attention" if any("attn" in n for n in names)
            else "router" if any("router" in n for n in names) else "head")
    return f"{kind} ({part})"


def leaf_overhead() -> None:
    """The fixed price of a leaf call: a tiny q4_0 weight (32 x 64), one row of x, int8 path."""
    from minimoe.kernels import int8matmul, pack
    from minimoe.nn import linear
    from minimoe.quant import quantize
    rng = np.random.default_rng(0)
    w = quantize(rng.standard_normal((32, 64)).astype(np.float32), "q4_0")
    x = rng.standard_normal((1, 64)).astype(np.float32)
    pw, out, e0 = pack(w), np.empty((1, 32), np.float32), np.zeros(1, np.int64)

    def per_call(fn, n=20000) -> float:
        fn()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n * 1e6

    previous = minimoe.set_activation_precision("int8")
    try:
        kernel = per_call(lambda: int8matmul.imatmul_into(x, pw, e0, out, False))
        one = per_call(lambda: linear.forward(x, w))
        three = per_call(lambda: linear.forward_many(x, [w, w, w], [None] * 3))
    finally:
        minimoe.set_activation_precision(previous)
    print(f"one leaf call on a 32 x 64 q4_0 weight: the kernel {kernel:.1f} us, linear.forward {one:.1f} us, "
          f"forward_many over 3 weights {three:.1f} us")


if __name__ == "__main__":
    main()
