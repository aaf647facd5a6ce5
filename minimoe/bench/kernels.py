"""`minimoe bench kernels`: fused packed GEMV/GEMM against float32 BLAS on one big weight.

Shape legend: O output rows, I input width (default 14336 x 4096, one Mixtral-8x7B expert
projection), R rows of x (1 for decode, 64 for prefill).

For each format it times, in one run:
    fp32 BLAS        x @ W.T with W float32 (NumPy -> OpenBLAS)
    fused            minimoe.matmul(x, qt): the packed GEMV (R=1) or tile-dequantize + BLAS (R=64)
    dequant+BLAS     dequantize the whole W to float32, then x @ W.T
    twin             the same fused call with MINIMOE_BACKEND=numpy
and reports each as milliseconds, effective GB/s of weight bytes (the bytes the format stores),
and the speed-up over fp32 BLAS. It also times the first call's Numba compile, and the start
from Numba's on-disk cache, each in a fresh Python process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from minimoe.bench.timing import best_time, load_warning, machine_info
from minimoe.kernels import backend
from minimoe.kernels.backend import blas_threads
from minimoe.kernels.packed import pack
from minimoe.kernels.qmatmul import GEMV, dequantize, qmatmul

FORMATS = ("q4_0", "q8_0", "mxfp4", "q4_1")
TARGETS = {"q4_0 GEMV >= 3x fp32 BLAS": ("q4_0", "gemv_speedup", 3.0),
           "q8_0 GEMV >= 2x fp32 BLAS": ("q8_0", "gemv_speedup", 2.0),
           "q4_0 prefill (batch 64) within 1.5x of fp32 BLAS": ("q4_0", "prefill_speedup", 1 / 1.5)}


def quantize_rows(w: np.ndarray, fmt: str, rows: int = 1024):
    """quant.quantize in slabs of rows (mxfp4's encoder holds a (rows*I/32, 32, 16) float array)."""
    from minimoe.quant import QTensor, quantize
    parts = [quantize(w[i:i + rows], fmt).blocks for i in range(0, w.shape[0], rows)]
    return QTensor(fmt, w.shape, np.ascontiguousarray(np.concatenate(parts)))


def run(O: int = 14336, I: int = 4096, batch: int = 64, formats=FORMATS, twins: bool = True,
        compile_times: bool = True, repeat: int = 5, progress=None) -> dict:
    """Time every format; returns the JSON-ready dict that `format_report` prints."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((O, I), dtype=np.float32) * np.float32(0.02)   # (O, I)
    x1 = rng.standard_normal((1, I), dtype=np.float32)                    # (1, I)
    xb = rng.standard_normal((batch, I), dtype=np.float32)                # (R, I)
    step = progress or (lambda msg: None)
    out = {"shape": [O, I], "batch": batch, "repeat": repeat, "machine": machine_info(), "formats": {}}

    step("fp32 BLAS")
    t1 = best_time(lambda: x1 @ w.T, repeat)
    tb = best_time(lambda: xb @ w.T, repeat)
    out["fp32_blas"] = {"weight_bytes": w.nbytes, "gemv_ms": 1e3 * t1, "gemv_gbs": w.nbytes / t1 / 1e9,
                        "prefill_ms": 1e3 * tb, "prefill_gflops": 2 * batch * O * I / tb / 1e9}
    for fmt in formats:
        step(f"{fmt}: quantize")
        qt = quantize_rows(w, fmt)
        pw = pack(qt)
        r = {"weight_bytes": qt.nbytes, "bits_per_weight": 8 * qt.nbytes / (O * I)}
        step(f"{fmt}: fused GEMV")
        with backend("numba"):
            tg = best_time(lambda: qmatmul(x1, pw), repeat)
            tp = best_time(lambda: qmatmul(xb, pw), repeat)
            td = best_time(lambda: x1 @ dequantize(pw).T, max(1, repeat // 2))
            # the same GEMV on one core (the kernel compiled without threads), and BLAS on one
            # thread: how much the other cores add, to each
            y1, first = np.empty((1, O), np.float32), np.zeros(1, np.int64)
            tg1 = best_time(lambda: GEMV[pw.fmt].serial(x1, pw.d, pw.m, pw.qs, pw.G, first, y1), repeat)
        with blas_threads(1):
            t1_one = best_time(lambda: x1 @ w.T, repeat)
        # the ratios are taken against an fp32 time measured right beside them
        t1_here = best_time(lambda: x1 @ w.T, repeat)
        tb_here = best_time(lambda: xb @ w.T, max(1, repeat // 2))
        r.update(gemv_ms=1e3 * tg, gemv_gbs=qt.nbytes / tg / 1e9, fp32_gemv_ms=1e3 * t1_here,
                 gemv_1core_ms=1e3 * tg1, gemv_cores_speedup=tg1 / tg, fp32_gemv_1thread_ms=1e3 * t1_one,
                 fp32_gemv_threads_speedup=t1_one / t1_here, gemv_1core_speedup=t1_one / tg1,
                 gemv_speedup=t1_here / tg, dequant_blas_ms=1e3 * td, dequant_blas_speedup=t1_here / td,
                 prefill_ms=1e3 * tp, prefill_gflops=2 * batch * O * I / tp / 1e9,
                 fp32_prefill_ms=1e3 * tb_here, prefill_speedup=tb_here / tp)
        if twins:
            step(f"{fmt}: NumPy twins")
            with backend("numpy"):
                r["twin_gemv_ms"] = 1e3 * best_time(lambda: qmatmul(x1, pw), 2)
                r["twin_prefill_ms"] = 1e3 * best_time(lambda: qmatmul(xb, pw), 2)
            r["numba_vs_twin_gemv"] = r["twin_gemv_ms"] / r["gemv_ms"]
            r["numba_vs_twin_prefill"] = r["twin_prefill_ms"] / r["prefill_ms"]
        out["formats"][fmt] = r
        del qt, pw
    if compile_times:
        step("compile time (fresh processes)")
        out["compile"] = compile_time()
    out["targets"] = {name: {"value": out["formats"][f][key], "target": goal, "met": out["formats"][f][key] >= goal}
                      for name, (f, key, goal) in TARGETS.items() if f in out["formats"]}
    return out


_COMPILE_SCRIPT = r"""
import json, time
t0 = time.perf_counter()
import numpy as np
from minimoe.kernels.packed import pack
from minimoe.kernels.qmatmul import qmatmul
from minimoe.quant import quantize
t_import = time.perf_counter() - t0
res = {"import_s": t_import}
rng = np.random.default_rng(0)
for fmt in ("q4_0", "q8_0", "mxfp4"):
    pw = pack(quantize(rng.standard_normal((64, 256)).astype(np.float32), fmt))
    x1, x8 = rng.standard_normal((1, 256)).astype(np.float32), rng.standard_normal((8, 256)).astype(np.float32)
    t0 = time.perf_counter(); qmatmul(x1, pw); res[fmt + "_gemv_first_call_s"] = time.perf_counter() - t0
    t0 = time.perf_counter(); qmatmul(x8, pw); res[fmt + "_prefill_first_call_s"] = time.perf_counter() - t0
print(json.dumps(res))
"""


def compile_time() -> dict:
    """First-call times in two fresh processes sharing an empty Numba cache directory: the first
    compiles (cold), the second loads the compiled code from the cache (a user's usual start)."""
    with tempfile.TemporaryDirectory() as cache_dir:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
        runs = []
        for _ in range(2):
            r = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], capture_output=True, text=True,
                               env=env, timeout=600)
            if r.returncode != 0:
                return {"error": r.stderr[-2000:]}
            runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return {"cold": runs[0], "cached": runs[1]}


def format_report(r: dict) -> str:
    O, I = r["shape"]
    m = r["machine"]
    fb = r["fp32_blas"]
    lines = [f"minimoe bench kernels: W {O} x {I}, x 1 x {I} (decode) and {r['batch']} x {I} (prefill)",
             f"  {m['cpu']}, {m['cores']} cores; {m['blas']} ({m['blas_core']}, {m['blas_threads']} threads); "
             f"numba {m['numba']} ({m['numba_threads']} threads)", ""]
    if load_warning(m):
        lines.insert(2, "  " + load_warning(m))
    lines += [f"fp32 BLAS: GEMV {fb['gemv_ms']:.2f} ms ({fb['gemv_gbs']:.1f} GB/s of weights), "
             f"batch {r['batch']} {fb['prefill_ms']:.1f} ms ({fb['prefill_gflops']:.0f} GFLOP/s)", "",
             f"{'batch 1':<10}{'bytes':>11}{'fused ms':>10}{'GB/s':>7}{'vs fp32':>9}{'deq+BLAS':>10}"
             f"{'vs fp32':>9}{'twin ms':>9}{'numba/twin':>11}"]
    for fmt, f in r["formats"].items():
        lines.append(f"{fmt:<10}{f['weight_bytes'] / 2**20:>8.1f}MiB{f['gemv_ms']:>10.2f}{f['gemv_gbs']:>7.1f}"
                     f"{f['gemv_speedup']:>8.2f}x{f['dequant_blas_ms']:>10.1f}{f['dequant_blas_speedup']:>8.2f}x"
                     f"{f.get('twin_gemv_ms', float('nan')):>9.1f}{f.get('numba_vs_twin_gemv', float('nan')):>10.1f}x")
    lines += ["", f"{'one core':<10}{'fused ms':>10}{'all/one':>9}{'fp32 ms':>9}{'all/one':>9}{'vs fp32':>9}"
                  "   (the GEMV without threads, BLAS with one thread: what the other cores add)"]
    for fmt, f in r["formats"].items():
        lines.append(f"{fmt:<10}{f['gemv_1core_ms']:>10.2f}{f['gemv_cores_speedup']:>8.2f}x"
                     f"{f['fp32_gemv_1thread_ms']:>9.2f}{f['fp32_gemv_threads_speedup']:>8.2f}x"
                     f"{f['gemv_1core_speedup']:>8.2f}x")
    lines += ["", f"{'batch ' + str(r['batch']):<10}{'fused ms':>10}{'GFLOP/s':>9}{'fp32 ms':>9}{'vs fp32':>9}"
                  f"{'twin ms':>9}{'numba/twin':>11}"]
    for fmt, f in r["formats"].items():
        lines.append(f"{fmt:<10}{f['prefill_ms']:>10.1f}{f['prefill_gflops']:>9.0f}{f['fp32_prefill_ms']:>9.1f}"
                     f"{f['prefill_speedup']:>8.2f}x{f.get('twin_prefill_ms', float('nan')):>9.1f}"
                     f"{f.get('numba_vs_twin_prefill', float('nan')):>10.1f}x")
    c = r.get("compile")
    if c and "error" not in c:
        lines += ["", "first call (fresh process): " + ", ".join(
            f"{k.removesuffix('_first_call_s')} {c['cold'][k]:.2f} s compiled / {c['cached'][k]:.2f} s cached"
            for k in c["cold"] if k.endswith("_first_call_s")) + f"; import {c['cached']['import_s']:.2f} s"]
    elif c:
        lines += ["", "compile timing failed: " + c["error"].splitlines()[-1]]
    lines += ["", "targets:"]
    for name, t in r["targets"].items():
        lines.append(f"  {'met    ' if t['met'] else 'NOT met'}  {name}: {t['value']:.2f}x")
    return "\n".join(lines)
