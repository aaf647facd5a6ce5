#!/usr/bin/env python
"""Int8 against float activations, on one GEMV, interleaved: for a machine whose speed drifts.

Shape legend: O output rows, I input width (default 14336 x 4096, one Mixtral-8x7B expert
projection).

Each round times, one right after the other (best of 3 calls each), on all cores and on one:
    fp32 BLAS          x @ W.T (one BLAS thread for the one-core case)
    int8 kernel        minimoe/kernels/int8matmul.py's GEMV, with the dot4 this CPU runs
    float kernel       minimoe/kernels/qmatmul.py's GEMV (x stays float32)
and prints the median over rounds of each time and of the ratios taken within a round:

    PYTHONPATH=$PWD python tests/benchmarks/int8_vs_float_gemv.py [--rounds 9] [--rows 14336 --cols 4096]
"""
from __future__ import annotations

import argparse
import contextlib
import statistics

import numpy as np

from minimoe.bench.kernels import quantize_rows
from minimoe.bench.timing import best_time, machine_info
from minimoe.kernels import int8matmul as im
from minimoe.kernels import vnni
from minimoe.kernels.backend import blas_threads
from minimoe.kernels.packed import pack
from minimoe.kernels.qmatmul import GEMV


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--rows", type=int, default=14336)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--formats", default="q4_0,q8_0")
    args = ap.parse_args()
    O, I = args.rows, args.cols
    rng = np.random.default_rng(0)
    w = rng.standard_normal((O, I), dtype=np.float32) * np.float32(0.02)    # (O, I)
    x = rng.standard_normal((1, I), dtype=np.float32)                       # (1, I)
    experts, out = np.zeros(1, np.int64), np.empty((1, O), np.float32)
    packs = {f: pack(quantize_rows(w, f)) for f in args.formats.split(",")}
    times: dict = {}
    for _ in range(args.rounds):
        for cores in ("all", "one"):
            with blas_threads(1) if cores == "one" else contextlib.nullcontext():
                t_blas = best_time(lambda: x @ w.T, 3)
            times.setdefault(("fp32 BLAS", cores), []).append(t_blas)
            for fmt, pw in packs.items():
                qw = im.quad_words(pw)
                k_int8 = im.variant(fmt, None, cores == "all").numba
                k_float = (GEMV[fmt] if cores == "all" else GEMV[fmt].serial).numba
                t_int8 = best_time(lambda: k_int8(x, pw.d, pw.m, qw, pw.G, experts, out), 3)
                t_float = best_time(lambda: k_float(x, pw.d, pw.m, pw.qs, pw.G, experts, out), 3)
                for name, t in ((f"{fmt} int8", t_int8), (f"{fmt} float", t_float)):
                    times.setdefault((name, cores), []).append(t)
                    times.setdefault((f"{name} vs fp32 BLAS", cores), []).append(t_blas / t)
                times.setdefault((f"{fmt} int8 / float speed", cores), []).append(t_float / t_int8)
    m = machine_info()
    print(f"{O} x {I}, {args.rounds} rounds; {m['cpu']}, {m['cores']} cores; dot4 = {vnni.int8_dot()}")
    for (name, cores), v in times.items():
        med = statistics.median(v)
        cores = "all cores" if cores == "all" else "one core"
        if "vs" in name or "/" in name:
            print(f"  {name:<28}{cores:>9}  {med:6.2f}x   (rounds {min(v):.2f}-{max(v):.2f})")
        else:
            print(f"  {name:<28}{cores:>9}  {med * 1e3:6.2f} ms  {O * I / med / 1e9:5.1f} G weights/s")


if __name__ == "__main__":
    main()
