"""The one place where the model's math meets the fast kernels, and where the trace records.

Every hot operation of the forward pass is a *leaf*: a readable NumPy function in minimoe/nn/ (the
reference, the code a debugger steps through) paired with a Numba kernel in minimoe/kernels/ that
computes the same thing. `Leaf` holds the pair. Calling it runs

    the Numba kernel   when the backend is "numba" (minimoe.set_backend), the arrays are float32,
                       and the kernel accepts the call (its `when` test, e.g. "inference only")
    the NumPy twin     otherwise; MINIMOE_BACKEND=numpy runs the twins everywhere

and, only inside `with minimoe.trace()`, hands the call's arrays to the trace (FLOPs, bytes, time),
so the math in minimoe/nn/ carries no instrumentation:

    nn/norm.py:     RMSNORM = Leaf("norm", rmsnorm, "minimoe.kernels.train:rmsnorm")
                    y, xhat, rstd = RMSNORM(x, weight, eps, name="attn_norm")
                    # -> kernels/train.py's rmsnorm, or nn/norm.py's rmsnorm; then the trace

The leaves are matmul (float or packed weights, one matrix or a stack of experts), rmsnorm, rope,
attention over the keys and values (KV cache or not), the router's top-k, MoE dispatch/gather/
combine, the SwiGLU activation and the embedding lookup. Model.forward runs prefill, one-token
decode and training through the same nn/ functions; only the leaves differ in speed.

`inference()` marks a stretch with no backward pass (Model.__call__, generate): leaves may then
skip what only the backward needs (the attention probabilities).

The Numba kernels are imported on first use ("module:function"), so `import minimoe` loads no
Numba and compiles nothing, and MINIMOE_BACKEND=numpy never needs a compiled kernel.
"""
from __future__ import annotations

import contextlib
import importlib
import time

import numpy as np

from minimoe.inspect import tracing
from minimoe.kernels.backend import _current as _BACKEND   # ["numba"] or ["numpy"]: get_backend()

_INFERENCE = [False]     # True inside `with inference()`: no backward pass will follow


@contextlib.contextmanager
def inference():
    """Run the block with no backward pass to follow (leaves keep no backward caches)."""
    before = _INFERENCE[0]
    _INFERENCE[0] = True
    try:
        yield
    finally:
        _INFERENCE[0] = before


def in_inference() -> bool:
    return _INFERENCE[0]


def _resolve(ref: str):
    """'minimoe.kernels.train:rmsnorm_rows' -> that function (imports its module, and so Numba)."""
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def all_float32(*arrays) -> bool:
    """True when every floating-point array argument is float32 (integer arrays, None and
    non-arrays are ignored): the compiled kernels take float32 only."""
    for a in arrays:
        if isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.dtype != np.float32:
            return False
    return True


class Leaf:
    """A hot operation: `numpy` (the readable twin), `numba` ("module:function", the same signature,
    imported on first use, or None), `kind` (how the trace counts it, see inspect/tracing.py; None
    for a backward, which is not traced), and `when(*args)`: whether the Numba kernel takes this
    call (default: every floating-point array is float32)."""

    def __init__(self, kind: str, numpy, numba: str | None = None, when=all_float32):
        self.kind, self.numpy, self._numba_ref, self.when = kind, numpy, numba, when
        self._numba = None
        self.__doc__ = numpy.__doc__
        self.__name__ = numpy.__name__

    @property
    def numba(self):
        if self._numba is None and self._numba_ref is not None:
            self._numba = _resolve(self._numba_ref)
        return self._numba

    def pick(self, *args):
        """The function this call runs: the Numba kernel or the NumPy twin."""
        if _BACKEND[0] == "numba" and self._numba_ref is not None and self.when(*args):
            return self._numba or self.numba
        return self.numpy

    def __call__(self, *args, name: str | None = None):
        fn = self.pick(*args)
        tr = tracing.ACTIVE                               # None unless inside `with minimoe.trace()`
        if tr is None or self.kind is None:               # (kind None: a backward, never traced)
            return fn(*args)
        t0 = time.perf_counter()
        out = fn(*args)
        tr.record(self.kind, name or self.kind, args, out, t0)
        return out

    def __repr__(self) -> str:
        return f"Leaf({self.__name__}: {self._numba_ref or 'NumPy only'})"
