"""Finite-difference gradient checks: is a hand-written backward pass right?

For a scalar loss L(theta) and an analytic gradient g = dL/dtheta, pick a random direction u
(unit norm) and compare the directional derivative two ways:

    analytic   g . u
    numeric    (L(theta - 2h u) - 8 L(theta - h u) + 8 L(theta + h u) - L(theta + 2h u)) / (12 h)

The five-point stencil has error O(h^4), so in float64 with h = 1e-3 the truncation error is
~1e-12 and the rounding error ~1e-16 |L| / h ~ 1e-13: far below the 1e-6 we ask for. One random
direction per array checks every entry at once (a wrong entry would have to be exactly
orthogonal to u to hide), and one array at a time names the array that is wrong.

    rel_error = |analytic - numeric| / max(|analytic|, |numeric|)

except when both are within rounding noise of zero. A gradient that is truly zero (the router
of a top-1 renormalised MoE gets none from the task loss: its one weight is always 1) gives a
numeric value of pure rounding noise, ~eps |L| / h, and the ratio above would call that a
100% error. So each check estimates its noise, eps * max|L| / h, and counts a pair that is
within 1000 times that of zero as agreeing.

Always check in float64: float32 rounding (~1e-7 relative) swamps the differences.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def rel_error(a: float, b: float, zero: float = 0.0) -> float:
    """|a - b| / max(|a|, |b|), or 0 when both are within `zero` of 0."""
    scale = max(abs(a), abs(b))
    return 0.0 if scale <= zero else abs(a - b) / scale


def directional_derivative(loss: Callable[[], float], x: np.ndarray, u: np.ndarray,
                           h: float) -> tuple[float, float]:
    """(d/dt loss() at x + t u, t = 0, by the five-point stencil; its rounding noise).
    `loss` reads `x`, which is perturbed in place and restored exactly."""
    x0 = x.copy()
    values = []
    for t in (-2, -1, 1, 2):
        x[...] = x0 + (t * h) * u
        values.append(loss())
    x[...] = x0
    lm2, lm1, lp1, lp2 = values
    noise = np.finfo(np.float64).eps * max(abs(v) for v in values) / h
    return (lm2 - 8 * lm1 + 8 * lp1 - lp2) / (12 * h), noise


def check_gradients(loss: Callable[[], float], arrays: dict, grads: dict, h: float = 1e-3,
                    seed: int = 0, n_dirs: int = 1) -> dict[str, float]:
    """Relative error of each array's analytic gradient along `n_dirs` random directions.

    loss()  computes the scalar loss from the current contents of `arrays` (float64)
    arrays  {name: array}, perturbed in place one at a time and restored
    grads   {name: analytic dloss/darray}, same shapes
    Returns {name: worst relative error}.
    """
    rng = np.random.default_rng(seed)
    errors = {}
    for name, x in arrays.items():
        if x.dtype != np.float64:
            raise TypeError(f"gradient check of {name!r} needs float64, found {x.dtype}")
        g = grads[name]
        if g.shape != x.shape:
            raise ValueError(f"gradient of {name!r} has shape {g.shape}, expected {x.shape}")
        worst = 0.0
        for _ in range(n_dirs):
            u = rng.standard_normal(x.shape)
            u /= np.linalg.norm(u)
            analytic = float(np.sum(g * u))
            numeric, noise = directional_derivative(loss, x, u, h)
            worst = max(worst, rel_error(analytic, numeric, zero=1000 * noise))
        errors[name] = worst
    return errors


def assert_gradients(loss: Callable[[], float], arrays: dict, grads: dict, tol: float = 1e-6,
                     **kwargs) -> dict[str, float]:
    """check_gradients, raising AssertionError naming every array whose error is >= tol."""
    errors = check_gradients(loss, arrays, grads, **kwargs)
    bad = {k: v for k, v in errors.items() if not v < tol}
    if bad:
        raise AssertionError("gradient check failed (relative error >= %g): " % tol
                             + ", ".join(f"{k}: {v:.2e}" for k, v in bad.items()))
    return errors
