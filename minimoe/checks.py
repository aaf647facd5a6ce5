"""Checks of plain arguments (counts, sizes, rates, seeds, sampling settings), shared by the API
and the CLI. Each raises MinimoeError naming the argument, what was expected and what was found.

    n = check_int("batch_size", batch_size, lo=1)
    check_sampling(temperature, top_k, top_p)          # what generate() and sample() accept
"""
from __future__ import annotations

import math

import numpy as np

from minimoe.errors import MinimoeError


def check_int(name: str, v, lo: int | None = None, hi: int | None = None, none_ok: bool = False,
              hint: str = ""):
    """v as an int, if it is an integer (not a bool, not a float) in lo..hi; else MinimoeError."""
    if v is None and none_ok:
        return None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise MinimoeError(f"{name} must be an integer{_range(lo, hi)}{hint}, found {v!r}")
    v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise MinimoeError(f"{name} must be an integer{_range(lo, hi)}{hint}, found {v}")
    return v


def check_number(name: str, v, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                 none_ok: bool = False, hint: str = ""):
    """v as a float, if it is a finite real number with lo <= v (lo < v if lo_open) <= hi."""
    if v is None and none_ok:
        return None
    what = f"{name} must be a finite number{_range(lo, hi, lo_open)}{hint}, found {v!r}"
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise MinimoeError(what)
    v = float(v)
    if not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi):
        raise MinimoeError(what)
    return v


def _range(lo, hi, lo_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo}, {hi}]"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


def check_sampling(temperature, top_k, top_p) -> None:
    """temperature >= 0 (0: greedy); top_k an integer >= 1 or None; top_p in (0, 1] or None."""
    check_number("temperature", temperature, lo=0, hint=" (0 is greedy decoding)")
    check_int("top_k", top_k, lo=1, none_ok=True, hint=" (or None: no cut-off)")
    check_number("top_p", top_p, lo=0, hi=1, lo_open=True, none_ok=True, hint=" (or None: no cut-off)")


def check_seed(seed) -> None:
    """A seed for numpy.random.default_rng: None, or an integer >= 0."""
    check_int("seed", seed, lo=0, none_ok=True)
