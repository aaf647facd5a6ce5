"""minimoe.bench: the benchmarks behind `minimoe bench`, and this machine's measured peaks.

    from minimoe.bench import machine_peaks
    machine_peaks()      # {"copy_gbs": ..., "read_gbs": ..., "sgemm_gflops": ..., "cpu": ..., ...}

Files:
    machine.py   memory bandwidth and float32 matmul peak, cached in $MINIMOE_CACHE/machine.json
                 (default ~/.cache/minimoe/machine.json): the roofline's two ceilings
    kernels.py   `minimoe bench kernels`: fused packed GEMV/GEMM against float32 BLAS
    decode.py    `minimoe bench decode`: prefill and decode tokens/s per recipe and backend
    scaling.py   `minimoe bench moe-scaling`: time per token as experts grow, active params fixed
    timing.py    best-of-n timing, which BLAS and CPU kernel NumPy uses
"""
from minimoe.bench.machine import cache_path, machine_peaks

__all__ = ["machine_peaks", "cache_path"]
