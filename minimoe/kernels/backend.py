"""The backend switch: run the Numba kernels, or their NumPy twins.

    minimoe.set_backend("numpy")            # every kernel now runs its NumPy twin
    with minimoe.backend("numba"):          # ... except inside this block
        model.generate(prompt, 32)
    MINIMOE_BACKEND=numpy python train.py   # the same, chosen before anything runs

Every kernel in minimoe/kernels/ is a pair: a compiled Numba function and a NumPy function with
the same signature (its "twin"), written to be read and stepped through in a debugger. The two
are tested equal on ragged shapes. A `Kernel` object holds the pair; calling it runs the one the
current backend selects. (NUMBA_DISABLE_JIT=1 is the other way to step into a kernel: Numba then
runs the kernel's own Python source, loops and all, slowly.)
"""
from __future__ import annotations

import contextlib
import os

import numba

from minimoe.errors import MinimoeError

# Numba's parallel loops run on its "workqueue" thread pool unless the user chose another
# (NUMBA_THREADING_LAYER). The OpenMP pool's idle threads spin, waiting for work; when another
# program (or OpenBLAS's own spinning threads) holds a core, every parallel call then waits a
# whole scheduler time slice: decoding mixtral-mini under load measured 132 ms a token with
# OpenMP against 17 ms with workqueue. On an idle machine the two are as fast.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

# How wide LLVM makes the SIMD loops of every kernel. On Intel CPUs with AVX-512 it prefers 256-bit
# vectors ("prefer-256-bit", from when 512-bit instructions lowered the clock), which halves the
# width of the GEMVs' inner loops over bytes. Asking for the full 512 bits made mixtral-mini's q4_0
# decode about 1.2x faster here (docs/kernels.md). MINIMOE_SIMD_WIDTH=256 keeps LLVM's choice, and
# so does setting NUMBA_CPU_NAME or NUMBA_CPU_FEATURES yourself. It must happen before Numba
# compiles (or loads from its cache) its first function, so it sits here, at import. The choice is
# Numba's, so it holds for every Numba function in the process, and compiled code is cached per
# choice.
SIMD_WIDTH = os.environ.get("MINIMOE_SIMD_WIDTH", "512")


def _prefer_512_bit_vectors() -> None:
    """Tell Numba to compile for this CPU with 512-bit vectors, when it has AVX-512 and nobody
    chose a target (numba.config.CPU_FEATURES then says so)."""
    if SIMD_WIDTH != "512" or os.environ.get("NUMBA_CPU_NAME") or os.environ.get("NUMBA_CPU_FEATURES"):
        return
    import llvmlite.binding as llvm
    features = llvm.get_host_cpu_features()
    if not features.get("avx512f") or not features.get("avx512bw"):
        return
    name, flat = llvm.get_host_cpu_name(), features.flatten() + ",-prefer-256-bit"
    os.environ["NUMBA_CPU_NAME"], os.environ["NUMBA_CPU_FEATURES"] = name, flat   # Numba re-reads its
    numba.config.CPU_NAME, numba.config.CPU_FEATURES = name, flat                  # config from these


if SIMD_WIDTH not in ("256", "512"):
    raise MinimoeError(f"$MINIMOE_SIMD_WIDTH must be 256 or 512, found {SIMD_WIDTH!r}")
_prefer_512_bit_vectors()

BACKENDS = ("numba", "numpy")


class BackendError(MinimoeError, ValueError):
    """An unknown backend name (in set_backend, backend() or $MINIMOE_BACKEND)."""


def _check(name, where: str) -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise BackendError(f"{where}: backend must be one of {', '.join(BACKENDS)}, found {name!r}")
    return name.lower()


_current = [_check(os.environ.get("MINIMOE_BACKEND", "numba") or "numba", "$MINIMOE_BACKEND")]


def get_backend() -> str:
    """The backend kernels run on now: "numba" or "numpy"."""
    return _current[0]


def set_backend(name: str) -> str:
    """Select the backend for every kernel from now on; returns the previous one."""
    previous = _current[0]
    _current[0] = _check(name, "set_backend")
    return previous


@contextlib.contextmanager
def backend(name: str):
    """`with minimoe.backend("numpy"): ...` runs the block on that backend, then restores the old one."""
    previous = set_backend(name)
    try:
        yield name
    finally:
        _current[0] = previous


class Kernel:
    """A Numba kernel beside its NumPy twin. `k(*args)` runs the one the backend selects;
    `k.numba(*args)` and `k.numpy(*args)` run one of them explicitly (tests, benchmarks)."""

    def __init__(self, numba_fn, numpy_fn):
        self.numba = numba_fn
        self.numpy = numpy_fn
        self.name = getattr(numpy_fn, "__name__", "kernel").removesuffix("_numpy")
        self.__doc__ = numpy_fn.__doc__

    def __call__(self, *args):
        if _current[0] == "numba":
            return self.numba(*args)
        return self.numpy(*args)

    def __repr__(self) -> str:
        return f"Kernel({self.name})"


def twin(numpy_fn):
    """Decorator: `@twin(f_numpy)` above `@njit def f(...)` makes `f` a Kernel pairing the two."""
    def pair(numba_fn):
        return Kernel(numba_fn, numpy_fn)
    return pair


# ----------------------------------------------------------------------------------------------
# OpenBLAS's thread count, for a stretch of many small BLAS calls
# ----------------------------------------------------------------------------------------------

def openblas_threads():
    """(get, set) thread-count functions of the OpenBLAS that NumPy loaded, or None (another BLAS).
    NumPy's wheels bundle it as scipy-openblas, whose symbols carry a prefix and a suffix."""
    if not _OPENBLAS:
        _OPENBLAS.append(_find_openblas())
    return _OPENBLAS[0]


def _find_openblas():
    import ctypes
    import glob
    import numpy as np
    here = os.path.dirname(np.__file__)
    libs = (glob.glob(os.path.join(here, "..", "numpy.libs", "*openblas*"))
            + glob.glob(os.path.join(here, ".libs", "*openblas*")))
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas_", "64_"), ("scipy_openblas_", ""), ("openblas_", "64_"),
                               ("openblas_", "")):
            get = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
            put = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
            if get is not None and put is not None:
                return get, put
    return None


_OPENBLAS = []          # filled on first use: [(get, set)] or [None]


@contextlib.contextmanager
def blas_threads(n: int):
    """Run the block with OpenBLAS limited to n threads (a no-op if NumPy's BLAS is not OpenBLAS).

    The prefill path makes hundreds of small BLAS calls, each of which wakes and then waits for
    OpenBLAS's threads; minimoe runs them on its own threads instead, one BLAS thread each."""
    fns = openblas_threads()
    if fns is None:
        yield
        return
    get, put = fns
    before = get()
    put(n)
    try:
        yield
    finally:
        put(before)
