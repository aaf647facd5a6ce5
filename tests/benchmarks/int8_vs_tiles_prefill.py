#!/usr/bin/env python
"""A prefill's rows through the int8 kernel or through the tiles + BLAS: where the two cross.

Shape legend: R rows of x, O output rows, I input width.

For mixtral-mini's expert matrices (1408 x 512 gate/up, 512 x 1408 down), q4_0 and q8_0, and R
rows of x, times (best of 5 x 20 calls, all cores):
    int8 kernel     minimoe/kernels/int8matmul.py's imatmul_rows (codes unpacked once per group)
    tiles + BLAS    minimoe/kernels/qmatmul.py's _prefill (dequantize a tile, one-thread BLAS,
                    one worker per core)
and prints the int8 kernel's speed over the tiles'. qmatmul.INT8_GEMM_MAX_ROWS is set from it.

    PYTHONPATH=$PWD python tests/benchmarks/int8_vs_tiles_prefill.py [--rows 8,16,32,64,128]
"""
from __future__ import annotations

import argparse

import numpy as np

from minimoe.bench.timing import best_time, machine_info
from minimoe.kernels import int8matmul as im
from minimoe.kernels import qmatmul as qm
from minimoe.kernels.packed import pack, to_kernel_order
from minimoe.quant import quantize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="8,16,32,64,128", help="comma-separated R")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    info = machine_info()
    print(f"{info.get('cpu')}, {info.get('cores')} cores; int8 kernel speed / tiles + BLAS speed")
    for fmt in ("q4_0", "q8_0"):
        for O, I in ((1408, 512), (512, 1408)):
            w = pack(quantize(rng.standard_normal((O, I)).astype(np.float32), fmt))
            row = []
            for R in (int(r) for r in args.rows.split(",")):
                x = rng.standard_normal((R, I)).astype(np.float32)
                out = np.empty((R, O), np.float32)
                t_int8 = best_time(lambda: [im.imatmul_rows(x, w, 0, out) for _ in range(20)], 5)
                t_tiles = best_time(lambda: [qm._prefill(to_kernel_order(x).reshape(R, -1), w, 0, out)
                                             for _ in range(20)], 5)
                row.append(f"R={R}: {t_tiles / t_int8:.2f}")
            print(f"{fmt} {O} x {I}: " + ", ".join(row))


if __name__ == "__main__":
    main()
