"""This machine's memory bandwidth and matmul peak: the two lines of a roofline.

    m = machine()          # {"bandwidth_gbs": 11.2, "peak_gflops": 95.0, "source": "..."}
    ridge = m["peak_gflops"] / m["bandwidth_gbs"]     # FLOPs per byte where the two lines meet

`minimoe bench` (minimoe/bench, the kernels issue) measures both carefully and caches them. We use
its cached numbers when they are there. Otherwise `quick_measure()`, kept apart below, takes a
rough measurement in about half a second (a large array copy, a 1024x1024 float32 matmul) and says
so in "source".
"""
from __future__ import annotations

import functools
import time

import numpy as np


@functools.lru_cache(maxsize=1)
def machine() -> dict:
    """{"bandwidth_gbs", "peak_gflops", "source"}: from minimoe bench's cache if present, else
    a quick measurement (once per process)."""
    cached = _from_bench()
    return cached if cached is not None else quick_measure()


def _from_bench() -> dict | None:
    """The numbers `minimoe bench` cached, or None if it has not run (or does not exist yet)."""
    try:
        from minimoe.bench import machine as bench_machine          # the kernels issue's API
    except ImportError:
        return None
    try:
        m = bench_machine(measure=False)
    except Exception:                                                 # no cache yet, or a new API
        return None
    if not m:
        return None
    return {"bandwidth_gbs": float(m["bandwidth_gbs"]), "peak_gflops": float(m["peak_gflops"]),
            "source": "minimoe bench (cached)"}


# --- a rough fallback, used only when minimoe bench has no cached numbers ------------------------
def quick_measure(mb: int = 64, n: int = 1024, repeats: int = 3) -> dict:
    """Copy bandwidth (read + write of an `mb` MB float32 array) and float32 matmul GFLOP/s
    (n x n @ n x n, 2 n^3 FLOPs), best of `repeats`. Rough: `minimoe bench` does it properly."""
    a = np.ones(mb * 2**20 // 4, dtype=np.float32)
    b = np.empty_like(a)
    best = min(_timed(lambda: np.copyto(b, a)) for _ in range(repeats))
    bandwidth = 2 * a.nbytes / best / 1e9                             # read a, write b
    x = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    x @ x                                                             # warm up the BLAS threads
    best = min(_timed(lambda: x @ x) for _ in range(repeats))
    peak = 2 * n**3 / best / 1e9
    return {"bandwidth_gbs": bandwidth, "peak_gflops": peak,
            "source": f"quick measurement ({mb} MB copy, {n}x{n} float32 matmul); "
                      f"run `minimoe bench` for careful numbers"}


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t
