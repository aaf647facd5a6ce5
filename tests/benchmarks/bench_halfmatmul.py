#!/usr/bin/env python
"""bf16 and fp16 GEMV kernels (minimoe/kernels/halfmatmul.py) against float32 BLAS, in one run.

    PYTHONPATH=. python tests/benchmarks/bench_halfmatmul.py [--size 4096] [--repeat 20]

One row of activations times a (size, size) weight, best of `repeat` calls each. Only the ratios
within one run mean anything on a shared machine."""
import argparse
import time

import numpy as np

from minimoe.kernels.halfmatmul import matmul_bf16, matmul_fp16
from minimoe.quant.bf16 import float32_to_bf16


def best(f, repeat):
    f()                                                     # compile / warm up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=20)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    w = rng.standard_normal((a.size, a.size)).astype(np.float32)
    b, h = float32_to_bf16(w), w.astype(np.float16)
    x = rng.standard_normal((1, a.size)).astype(np.float32)
    tf = best(lambda: x @ w.T, a.repeat)
    tb = best(lambda: matmul_bf16(x, b), a.repeat)
    th = best(lambda: matmul_fp16(x, h), a.repeat)
    mb = a.size * a.size * 2 / 1e6
    print(f"{a.size}x{a.size} GEMV, best of {a.repeat}: float32 BLAS {tf * 1e3:.2f} ms ({2 * mb / tf / 1e3:.1f} GB/s), "
          f"bf16 {tb * 1e3:.2f} ms ({mb / tb / 1e3:.1f} GB/s), fp16 {th * 1e3:.2f} ms ({mb / th / 1e3:.1f} GB/s); "
          f"float32/bf16 = {tf / tb:.2f}x, float32/fp16 = {tf / th:.2f}x")


if __name__ == "__main__":
    main()
