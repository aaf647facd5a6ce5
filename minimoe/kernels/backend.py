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

from minimoe.errors import MinimoeError

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


# ----------------------------------------------------------------------------------------------
# The activations' precision in the decode GEMVs of packed weights
# ----------------------------------------------------------------------------------------------

PRECISIONS = ("auto", "float", "int8")


def _check_precision(name, where: str) -> str:
    if not isinstance(name, str) or name.lower() not in PRECISIONS:
        raise BackendError(f"{where}: activation precision must be one of {', '.join(PRECISIONS)}, "
                           f"found {name!r}")
    return name.lower()


_precision = [_check_precision(os.environ.get("MINIMOE_ACTIVATIONS", "auto") or "auto", "$MINIMOE_ACTIVATIONS")]


def get_activation_precision() -> str:
    """"auto", "float" or "int8": how a decode step multiplies packed weights (see set_activation_precision)."""
    return _precision[0]


def set_activation_precision(name: str) -> str:
    """How the decode GEMVs of packed (q4_0, q4_1, q8_0, mxfp4) weights treat the activations;
    returns the previous setting. Also $MINIMOE_ACTIVATIONS, read at import.

        "float"  x stays float32; the weights' codes are turned into floats (kernels/qmatmul.py)
        "int8"   x is rounded to int8 per block of 32, as llama.cpp does, and multiplied with the
                 codes in integers (kernels/int8matmul.py), with the CPU's dot-product instruction
                 where it has one (kernels/vnni.py), else plain integer loops
        "auto"   (the default) "int8" where the CPU has the instruction, else "float"

    The int8 setting also covers prefill products of up to qmatmul.INT8_GEMM_MAX_ROWS rows (beyond,
    x stays float32 for BLAS). The NumPy backend's reference path (nn/linear.py) is not affected."""
    previous = _precision[0]
    _precision[0] = _check_precision(name, "set_activation_precision")
    return previous


def twin(numpy_fn):
    """Decorator: `@twin(f_numpy)` above `@njit def f(...)` makes `f` a Kernel pairing the two."""
    def pair(numba_fn):
        return Kernel(numba_fn, numpy_fn)
    return pair


# ----------------------------------------------------------------------------------------------
# Numba's settings, made once, when the first kernel module is imported (not at `import minimoe`)
# ----------------------------------------------------------------------------------------------

_CONFIGURED = []


def configure_numba() -> None:
    """Choose Numba's thread pool and SIMD width for minimoe's kernels, once per process.

    Called at the top of every kernel module, which minimoe/kernels/dispatch.py imports on a
    kernel's first use, so that `import minimoe` changes nothing and loads no Numba. It writes
    Numba's own config (numba.config), never os.environ, and leaves alone whatever the user set:

    threading layer  OpenMP ("omp") where Numba has it, else "workqueue"; unless
                     NUMBA_THREADING_LAYER is set. Its pool is started here, with OpenMP told not
                     to spin (OMP_WAIT_POLICY=passive for the moment libgomp reads it; the
                     environment is put back). A parallel loop then costs ~10 microseconds to
                     start, against ~30 for workqueue's pool, and a GEMV of a million weights
                     runs 1.9x faster on 2 cores than on one, against 1.1x with workqueue. Idle
                     threads sleep, so another program holding a core costs no spinning (with
                     OpenMP's default spin, 132 ms a token under load against 17). GNU OpenMP
                     cannot be used in a forked child (Numba stops it): in a child forked after
                     the pool started, parallel_ok() is False and every kernel runs its one-core
                     compile. See docs/kernels.md, "Threads".
    SIMD width       $MINIMOE_SIMD_WIDTH = 512 (default) or 256, on x86 CPUs with AVX-512: LLVM's
                     own preference differs by CPU (256 on Intel, 512 on AMD Zen 4/5), so minimoe
                     states it either way: "-prefer-256-bit" or "+prefer-256-bit". Unless
                     NUMBA_CPU_NAME or NUMBA_CPU_FEATURES is set. It takes effect only if no Numba
                     function was compiled in this process before the first minimoe kernel.
    """
    if _CONFIGURED:
        return
    _CONFIGURED.append(True)
    import numba
    _say_when_compiling()
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]
        numba.config.THREADING_LAYER = "default"         # the first of those this Numba has
        _start_threads_without_spinning(numba)
    width = simd_width()
    if os.environ.get("NUMBA_CPU_NAME") or os.environ.get("NUMBA_CPU_FEATURES"):
        return
    features = simd_features(width)
    if features is not None:
        import llvmlite.binding as llvm
        numba.config.CPU_NAME, numba.config.CPU_FEATURES = llvm.get_host_cpu_name(), features


_PARALLEL = [True]      # False in a child forked from a process whose OpenMP pool runs


def parallel_ok() -> bool:
    """Whether this process may start Numba's parallel loops. Not in a child forked (e.g. by
    multiprocessing's "fork" pool) from a process whose GNU OpenMP pool was running: GNU OpenMP
    cannot be used there, and Numba stops such a child. The kernels then run their one-core
    compiles (`kernel.serial`), which give the same numbers."""
    return _PARALLEL[0]


def _forked_child() -> None:
    import numba
    try:
        layer = numba.threading_layer()
    except ValueError:                                   # no pool was started: nothing inherited
        return
    if layer == "omp":
        _PARALLEL[0] = False


def _start_threads_without_spinning(numba) -> None:
    """Start Numba's thread pool now, with GNU OpenMP's OMP_WAIT_POLICY=passive (idle threads
    sleep instead of spinning), unless the user set it. libgomp reads the variable once, when it
    is loaded, which starting the pool does; the environment is then put back as it was."""
    before = os.environ.get("OMP_WAIT_POLICY")
    if before is None:
        os.environ["OMP_WAIT_POLICY"] = "passive"
    try:
        numba.get_num_threads()                          # loads the layer's library, starts the pool
    finally:
        if before is None:
            os.environ.pop("OMP_WAIT_POLICY", None)
    os.register_at_fork(after_in_child=_forked_child)


def _say_when_compiling() -> None:
    """Print one line to stderr the first time Numba compiles something in this process (not when
    it loads a kernel from its on-disk cache), so that a first run's pause has a reason."""
    from numba.core import event

    class FirstCompile(event.Listener):
        said = False

        def on_start(self, ev):
            if not self.said:
                self.said = True
                import sys
                print("minimoe: compiling Numba kernels for this CPU (first run only: they are cached "
                      "for the next runs)...", file=sys.stderr, flush=True)

        def on_end(self, ev):
            pass

    event.register("numba:compile", FirstCompile())


def simd_width() -> str:
    """$MINIMOE_SIMD_WIDTH, checked: "512" (the default) or "256"."""
    width = os.environ.get("MINIMOE_SIMD_WIDTH", "512") or "512"
    if width not in ("256", "512"):
        raise MinimoeError(f"$MINIMOE_SIMD_WIDTH must be 256 or 512, found {width!r}")
    return width


def simd_features(width: str) -> str | None:
    """The host's LLVM feature string with the vector-width preference stated, or None where the
    CPU has no 512-bit vectors (AVX-512F and BW), so the width is the CPU's own."""
    import llvmlite.binding as llvm
    features = llvm.get_host_cpu_features()
    if not features.get("avx512f") or not features.get("avx512bw"):
        return None
    features.pop("prefer-256-bit", None)
    return features.flatten() + (",-prefer-256-bit" if width == "512" else ",+prefer-256-bit")


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
