"""This machine's memory bandwidth and matmul peak: the two lines of a roofline.

    m = machine()          # {"bandwidth_gbs": 11.2, "peak_gflops": 95.0, "source": "..."}
    ridge = m["peak_gflops"] / m["bandwidth_gbs"]     # FLOPs per byte where the two lines meet

`minimoe bench` measures both and caches them (minimoe/bench/machine.py, $MINIMOE_CACHE/machine.json);
we read that cache. If `minimoe bench` has never run here, minimoe.bench takes its quick
measurement (16 MiB arrays, a 1024^3 matmul: about a second), which we use but do not cache. The bandwidth is the read bandwidth: a decode step streams
its weights, reading each byte once.
"""
from __future__ import annotations

import functools
import os


@functools.lru_cache(maxsize=1)
def machine() -> dict:
    """{"bandwidth_gbs", "peak_gflops", "source"} from minimoe bench's cache (once per process)."""
    from minimoe.bench import cache_path, machine_peaks
    path = cache_path()
    cached = os.path.exists(path)
    # the cached peaks (full or quick); without a cache, a quick run that we do not save, so that
    # only `minimoe bench` writes the cache
    p = machine_peaks(quick=True, save=False)
    how = "quick measurement" if p.get("quick") else "measurement"
    where = f"cached in {path}" if cached else "not cached: run `minimoe bench` for careful numbers"
    return {"bandwidth_gbs": float(p["read_gbs"]), "peak_gflops": float(p["sgemm_gflops"]),
            "source": f"minimoe bench {how} of {p.get('measured_at', '?')}, {where}"}
