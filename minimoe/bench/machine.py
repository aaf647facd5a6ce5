"""This machine's two roofline numbers: memory bandwidth and matmul peak, measured and cached.

    from minimoe.bench import machine_peaks
    peaks = machine_peaks()          # measures once (a few seconds), then reads the cache
    peaks["copy_gbs"]                # GB/s moved by a parallel copy (bytes read + bytes written)
    peaks["read_gbs"]                # GB/s read by a parallel sum
    peaks["sgemm_gflops"]            # float32 matmul GFLOP/s through NumPy's BLAS (2048^3)

A kernel that streams its weights once (a decode GEMV) cannot beat read_gbs; a kernel that does
many flops per byte (a prefill GEMM) cannot beat sgemm_gflops. The roofline plot puts each
kernel between the two (tutorials/05_kernels_and_roofline.py; minimoe inspect reads the same file).

Which read bandwidth applies depends on how many bytes are read over and over: a working set that
fits in the CPU's caches is read several times faster than one that must come from DRAM. So the
read is also measured over a range of working-set sizes (`read_gbs_by_mib`, the "cache curve"),
and `read_gbs_for(peaks, nbytes)` looks up the bandwidth for a model of nbytes. A decode step
reads every active weight once, and over many tokens every expert is used, so the working set of
decoding is the whole model: that is the size to look up.

The cache is $MINIMOE_CACHE/machine.json, or ~/.cache/minimoe/machine.json. It is measured again
when the CPU or core count it was measured on differs, or with machine_peaks(refresh=True).
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
from numba import njit, prange

from minimoe.bench.timing import best_time, machine_info
from minimoe.kernels.backend import configure_numba, twin

configure_numba()

GB = 1e9


def cache_path() -> str:
    """Where the measured peaks are kept."""
    root = os.environ.get("MINIMOE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "minimoe")
    return os.path.join(root, "machine.json")


# The two streaming loops, each with its NumPy twin (NumPy's copy and sum run on one core).

def copy_numpy(src, dst):
    """dst[:] = src."""
    np.copyto(dst, src)


@twin(copy_numpy)
@njit(parallel=True, cache=True)
def copy(src, dst):
    for i in prange(src.shape[0]):
        dst[i] = src[i]


def read_sum_numpy(src):
    """The sum of src (every byte read once)."""
    return src.sum()


@twin(read_sum_numpy)
@njit(parallel=True, cache=True, fastmath={"reassoc"})
def read_sum(src):
    total = 0.0
    for i in prange(src.shape[0]):
        total += src[i]
    return total


CURVE_MIB = (1, 4, 16, 32, 48, 64, 96, 128, 256)     # working-set sizes of the cache curve
QUICK_CURVE_MIB = (1, 16)


def read_curve(sizes_mib=CURVE_MIB, repeat: int = 5) -> dict[str, float]:
    """{size in MiB (as a string, for JSON): GB/s} of a parallel read of an array of that size,
    read again and again (so a size that fits in the caches is read from the caches)."""
    curve = {}
    for mib in sizes_mib:
        src = np.ones(int(mib * 2**20) // 4, np.float32)
        read_sum.numba(src)                                # warm: the pages are touched
        curve[str(mib)] = src.nbytes / best_time(lambda: read_sum.numba(src), repeat, min_seconds=0.05) / GB
    return curve


def read_gbs_for(peaks: dict, nbytes: int) -> float:
    """The read bandwidth (GB/s) for a working set of nbytes: the cache curve's value at the
    smallest measured size that holds it (its largest size, or read_gbs, beyond the curve)."""
    curve = sorted((float(k) * 2**20, v) for k, v in peaks.get("read_gbs_by_mib", {}).items())
    for size, gbs in curve:
        if nbytes <= size:
            return gbs
    return peaks["read_gbs"]


def measure(quick: bool = False) -> dict:
    """Measure copy and read bandwidth (arrays far larger than the caches) and the sgemm peak."""
    mib = 16 if quick else 256                                # the largest size on the curve
    src = np.ones(mib * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    repeat = 3 if quick else 7
    t_copy = best_time(lambda: copy.numba(src, dst), repeat)
    t_copy_np = best_time(lambda: copy.numpy(src, dst), repeat)
    curve = read_curve(QUICK_CURVE_MIB if quick else CURVE_MIB, repeat)   # its last point is read_gbs
    m = 1024 if quick else 2048
    a = np.random.default_rng(0).standard_normal((m, m), dtype=np.float32)
    t_mm = best_time(lambda: a @ a, 3 if quick else 5)
    return {
        "copy_gbs": 2 * src.nbytes / t_copy / GB,              # read + write
        "read_gbs": curve[str(mib)],
        "copy_gbs_numpy_1core": 2 * src.nbytes / t_copy_np / GB,
        "sgemm_gflops": 2 * m**3 / t_mm / GB,
        "sgemm_size": m,
        "array_mib": src.nbytes / 2**20,
        "read_gbs_by_mib": curve,
        "quick": quick,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        **machine_info(),
    }


def machine_peaks(refresh: bool = False, quick: bool = False, save: bool = True) -> dict:
    """This machine's peaks: {"copy_gbs", "read_gbs", "sgemm_gflops", ... "cpu", "blas_core"},
    read from the cache file if it was measured on this CPU, else measured (and saved)."""
    path = cache_path()
    info = machine_info()
    if not refresh and os.path.exists(path):
        try:
            with open(path) as f:
                cached = json.load(f)
            if cached.get("cpu") == info["cpu"] and cached.get("cores") == info["cores"] and \
                    (quick or not cached.get("quick")) and "read_gbs_by_mib" in cached:
                return cached
        except (OSError, ValueError):
            pass                                           # unreadable: measure again
    peaks = measure(quick)
    if save:
        from minimoe.io.atomic import atomic_write_text
        atomic_write_text(path, json.dumps(peaks, indent=2))
    return peaks
