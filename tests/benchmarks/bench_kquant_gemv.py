"""One-token GEMV on a 4096 x 4096 weight: float32 BLAS, q4_0's fused kernel, the K-quant fused
kernels (q4_k, q6_k) and the reference (dequantize with quant/, then BLAS), in one run.

    PYTHONPATH=$PWD python tests/benchmarks/bench_kquant_gemv.py

Best of 20 calls each; the ratios are against float32 in the same run (docs/kernels.md).
"""
from __future__ import annotations

import time

import numpy as np

import minimoe
from minimoe import quant


def best(fn, n=20):
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(O: int = 4096, I: int = 4096) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((O, I)).astype(np.float32)                  # (O, I)
    x = rng.standard_normal((1, I)).astype(np.float32)                  # (1, I): one token
    packed = {f: quant.quantize(w, f) for f in ("q4_0", "q4_k", "q6_k")}
    t_f32 = best(lambda: x @ w.T)
    rows = {"float32 BLAS": t_f32}
    for fmt, qt in packed.items():
        rows[f"{fmt} fused GEMV"] = best(lambda: minimoe.matmul(x, qt))
    rows["q4_k dequantize + BLAS"] = best(lambda: x @ packed["q4_k"].dequantize().T, n=3)
    for name, t in rows.items():
        print(f"{name:24s} {t * 1e3:8.3f} ms   {t_f32 / t:5.2f}x float32")


if __name__ == "__main__":
    main()
