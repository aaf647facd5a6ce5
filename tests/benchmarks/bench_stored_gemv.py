#!/usr/bin/env python
"""The GEMV over GGUF blocks as stored (minimoe/kernels/stored_gemv.py, what a memory-mapped
checkpoint's big packed weights use) against the repacked kernels (qmatmul.py), in one run.

    PYTHONPATH=. python tests/benchmarks/bench_stored_gemv.py [--experts 4] [--size 2880] [--repeat 10]

Decode of one token's K routed experts: K rows of activations, row r times expert r of a stack
(K, size, size), best of `repeat` calls each. Only the ratios within one run mean anything on a
shared machine."""
import argparse
from timeit import default_timer as now

import numpy as np

from minimoe.kernels import pack
from minimoe.kernels.qmatmul import qmatmul
from minimoe.kernels.stored_gemv import matmul_stored
from minimoe.quant import quantize


def best(f, repeat):
    f()                                                     # compile / warm up (and repack)
    times = []
    for _ in range(repeat):
        t0 = now()
        f()
        times.append(now() - t0)
    return min(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--size", type=int, default=2880)
    p.add_argument("--repeat", type=int, default=10)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.experts, a.size)).astype(np.float32)
    experts = np.arange(a.experts)
    print(f"{a.experts} rows x experts of ({a.size}, {a.size}), best of {a.repeat}")
    for fmt in ("q8_0", "q4_0", "mxfp4"):
        w = quantize(0.02 * rng.standard_normal((a.experts, a.size, a.size)).astype(np.float32), fmt)
        t_stored = best(lambda: matmul_stored(x, w, experts), a.repeat)
        t_packed = best(lambda: qmatmul(x, pack(w), experts), a.repeat)
        print(f"{fmt:6} stored {1e3 * t_stored:7.2f} ms ({w.nbytes / t_stored / 1e9:5.2f} GB/s)   "
              f"repacked {1e3 * t_packed:7.2f} ms ({w.nbytes / t_packed / 1e9:5.2f} GB/s)   "
              f"stored/repacked time {t_stored / t_packed:5.2f}x")


if __name__ == "__main__":
    main()
