"""Timing helpers shared by the benchmarks: best-of-n wall time, and what BLAS this is.

Every benchmark reports the best of several runs (the least disturbed one). On a shared machine
other processes still add noise, so ratios are measured in one run, interleaved, and rounded.
"""
from __future__ import annotations

import ctypes
import glob
import os
import platform
import time

import numpy as np


def best_time(fn, repeat: int = 5, min_seconds: float = 0.0, warmup: int = 1) -> float:
    """The fastest of `repeat` calls of fn() in seconds (after `warmup` untimed calls); keeps
    repeating until `min_seconds` have been spent, for very short calls."""
    for _ in range(warmup):
        fn()
    best, spent, n = float("inf"), 0.0, 0
    while n < repeat or spent < min_seconds:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent, n = min(best, dt), spent + dt, n + 1
        if n >= 1000:
            break
    return best


def blas_info() -> dict:
    """Which BLAS NumPy calls, which CPU kernel it picked, and with how many threads."""
    info = {"numpy": np.__version__, "blas": "unknown", "blas_core": "unknown", "blas_threads": None}
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = f"{cfg.get('name')} {cfg.get('version')}"
    except Exception:                                    # older NumPy: no dict mode
        pass
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs", "*openblas*"))
    for path in libs:                                    # NumPy's bundled OpenBLAS names its kernel
        try:
            lib = ctypes.CDLL(path)
            for prefix in ("scipy_openblas_", "openblas_"):
                for suffix in ("64_", ""):
                    core = getattr(lib, f"{prefix}get_corename{suffix}", None)
                    threads = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
                    if core is not None:
                        core.restype = ctypes.c_char_p
                        info["blas_core"] = core().decode()
                        info["blas_threads"] = int(threads()) if threads else None
                        return info
        except OSError:
            continue
    return info


def machine_info() -> dict:
    """CPU model, cores, and the environment variables that change BLAS's speed."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import numba

    from minimoe.kernels.backend import configure_numba
    configure_numba()                                    # before get_num_threads starts Numba's pool
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                      "OMP_NUM_THREADS", "NUMBA_NUM_THREADS") if k in os.environ}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "numba": numba.__version__,
            "numba_threads": numba.get_num_threads(), "numba_threading_layer": _threading_layer(),
            "load_average_1min": load, "env": env, **blas_info()}


def _threading_layer() -> str:
    import numba
    try:
        return numba.threading_layer()
    except ValueError:                                   # no parallel kernel has run yet
        return "not started"


def load_warning(info: dict) -> str | None:
    """A warning line when other programs keep the cores busy (parallel kernels then wait)."""
    load, cores = info.get("load_average_1min"), info.get("cores") or 1
    if load is not None and load > 0.5 * cores:
        return (f"warning: load average {load:.1f} on {cores} cores: other programs are running, "
                f"and every parallel kernel waits for its slowest thread; these times are pessimistic")
    return None
