"""Data parallelism over threads: each core runs the forward and backward pass of its own slice
of the batch.

Shape legend: B batch, T block length, S shards (threads), N tokens, E experts.

On a small model most of a step is not matrix products but elementwise NumPy (softmax, SwiGLU,
RMSNorm, RoPE, AdamW), which runs on one core however many BLAS threads there are. Splitting
the batch into S shards and running each on its own thread puts every kind of work on every
core. NumPy releases the GIL inside its loops and BLAS calls, so the threads really do run at
once. Each thread uses a single-threaded BLAS (so `--threads N` means N cores, and
`--threads 1` one core). This is also much steadier on a busy machine:
a multi-threaded BLAS spin-waits for its workers, and one descheduled worker stalls the step.

The step computes exactly what the unsharded step computes, up to float rounding order:

    phase 1 (parallel)   each shard: forward, cross-entropy over its rows
    phase 2 (main)       the router losses over all shards' routing together (the
                         load-balancing loss is not a sum over tokens: f_e and P_e are batch
                         averages, so it needs the whole batch); their gradients are split back
    phase 3 (parallel)   each shard: backward, with its cross-entropy scaled by its share of the
                         tokens
    then the shards' gradients are summed in shard order (so the result is deterministic).
"""
from __future__ import annotations

import contextlib
import ctypes
import glob
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def shard_rows(B: int, n: int) -> list[slice]:
    """Split B rows into at most n contiguous, nearly equal slices."""
    n = max(1, min(n, B))
    bounds = np.linspace(0, B, n + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def merge_routing(routings: list[list]) -> list:
    """Per-shard routing stats (one list per shard, one entry per layer) -> one list whose
    entries hold the shards' rows concatenated: "probs", "logits" (N, E), "experts" (N, K)."""
    merged = []
    for layer_stats in zip(*routings):
        if layer_stats[0] is None:
            merged.append(None)
            continue
        merged.append({key: np.concatenate([s[key] for s in layer_stats])
                       for key in ("probs", "logits", "experts")})
    return merged


def split_router_grads(grads: dict, sizes: list[int]) -> list[dict]:
    """{layer: (N, E) array} over all tokens -> one such dict per shard, split by rows."""
    cuts = np.cumsum(sizes)[:-1]
    out = [dict() for _ in sizes]
    for layer, g in grads.items():
        for shard, part in zip(out, np.split(g, cuts)):
            shard[layer] = part
    return out


class Shards:
    """A thread pool of `n` workers, or none when n == 1 (then `map` is a plain loop)."""

    def __init__(self, n: int):
        self.n = max(1, int(n))
        self.pool = ThreadPoolExecutor(self.n, thread_name_prefix="minimoe-shard") if self.n > 1 else None

    def map(self, fn, *iterables) -> list:
        if self.pool is None:
            return [fn(*args) for args in zip(*iterables)]
        return list(self.pool.map(fn, *iterables))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


# --- BLAS threads -----------------------------------------------------------------------------------
def _openblas_setters():
    """The set/get-num-threads functions of the OpenBLAS that NumPy loaded, if any. NumPy's wheels
    bundle it as scipy-openblas, whose symbols carry a prefix and a suffix."""
    names = [("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
             ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
             ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
             ("openblas_set_num_threads", "openblas_get_num_threads")]
    libdirs = [os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs"),
               os.path.join(os.path.dirname(np.__file__), ".libs")]
    for d in libdirs:
        for path in glob.glob(os.path.join(d, "*openblas*")):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for set_name, get_name in names:
                if hasattr(lib, set_name) and hasattr(lib, get_name):
                    return getattr(lib, set_name), getattr(lib, get_name)
    return None


@contextlib.contextmanager
def blas_threads(n: int):
    """Run the block with NumPy's OpenBLAS limited to n threads (no-op if it cannot be found)."""
    fns = _openblas_setters()
    if fns is None:
        yield False
        return
    set_n, get_n = fns
    previous = get_n()
    set_n(int(n))
    try:
        yield True
    finally:
        set_n(previous)
