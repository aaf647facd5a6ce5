"""MoE dispatch and combine: group the tokens by expert, and put the weighted outputs back.

Shape legend: N tokens, C model width, E experts, K top-k, A = N*K assignments. Assignment
a = n*K + k is "token n's k-th choice"; `order` lists the assignments sorted by expert.

    order, offsets = dispatch(experts, E)     experts (N, K) -> order (A,), offsets (E+1,):
                                              expert e owns sorted positions offsets[e]..offsets[e+1]
    xs = gather(x, order, K)                  xs[i] = x[order[i] // K]           (A, C)
    y  = combine(ys, order, weights)          y[n] = sum_k weights[n, k] * ys[the position of n*K+k]
and for the backward pass (minimoe/nn/moe.py):
    dweights, dys = combine_backward(dy, ys, order, weights)
    dx = combine(dxs, order, ones)            the K gradients of each token summed back

`dispatch` is a counting sort (stable: within an expert, assignments keep token order, exactly
like np.argsort(kind="stable")). `combine` is written as a gather over the inverse permutation,
so every output row is written by one loop iteration and nothing races.

The NumPy twins are the readable functions of the same names in minimoe/nn/moe.py; the checked
entry points at the bottom have their signatures, and minimoe/kernels/dispatch.py picks one of the
two (float32 on the numba backend runs these). tests/test_kernels.py checks they agree.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from minimoe.kernels.backend import configure_numba
from minimoe.kernels.packed import KernelInputError, int_range

configure_numba()


@njit(cache=True, nogil=True)
def dispatch_sort(flat, E, order, offsets):
    offsets[:] = 0
    for a in range(flat.shape[0]):                       # count each expert's assignments
        offsets[flat[a] + 1] += 1
    for e in range(E):                                   # running totals: where each expert starts
        offsets[e + 1] += offsets[e]
    fill = offsets[:E].copy()
    for a in range(flat.shape[0]):                       # place, in token order within an expert
        e = flat[a]
        order[fill[e]] = a
        fill[e] += 1


@njit(cache=True, nogil=True)
def gather_rows(x, order, K, out):
    for i in range(order.shape[0]):
        n = order[i] // K
        out[i, :] = x[n, :]


@njit(cache=True, nogil=True)
def combine_rows(ys, order, weights, out):
    N, K = weights.shape
    C = ys.shape[1]
    inv = np.empty(order.shape[0], np.int64)
    for i in range(order.shape[0]):                      # inv[a]: where assignment a was sorted to
        inv[order[i]] = i
    for n in range(N):
        for c in range(C):
            out[n, c] = 0.0
        for k in range(K):
            w, i = weights[n, k], inv[n * K + k]
            for c in range(C):
                out[n, c] += w * ys[i, c]


@njit(cache=True, nogil=True)
def combine_backward_rows(dy, ys, order, weights, dweights, dys):
    N, K = weights.shape
    C = ys.shape[1]
    dweights[:] = 0.0
    for i in range(order.shape[0]):
        a = order[i]
        n, k = a // K, a % K
        acc = 0.0
        for c in range(C):
            acc += ys[i, c] * dy[n, c]
            dys[i, c] = weights[n, k] * dy[n, c]
        dweights[n, k] = acc


# ----------------------------------------------------------------------------------------------
# Checked entry points: the same signatures as the twins in minimoe/nn/moe.py
# ----------------------------------------------------------------------------------------------

def dispatch(experts: np.ndarray, E: int):
    """experts (N, K) ints in 0..E-1 -> (order (A,), offsets (E+1,)), both int64."""
    flat = np.ascontiguousarray(experts, dtype=np.int64).ravel()     # (A,) a = n*K + k
    lo, hi = int_range(flat) if flat.size else (0, 0)
    if lo < 0 or hi >= E:
        raise KernelInputError(f"dispatch: expert ids must lie in 0..{E - 1}, found {lo}..{hi}")
    order, offsets = np.empty(flat.size, np.int64), np.empty(E + 1, np.int64)
    dispatch_sort(flat, int(E), order, offsets)
    return order, offsets


def _check_order(order: np.ndarray, A: int, what: str) -> None:
    if order.shape != (A,) or order.dtype != np.int64:
        raise KernelInputError(f"{what}: order must be int64 ({A},), found {order.dtype} {order.shape}")
    lo, hi = int_range(order) if A else (0, 0)
    if lo < 0 or hi >= A:
        raise KernelInputError(f"{what}: order must be a permutation of 0..{A - 1}")


def gather(x: np.ndarray, order: np.ndarray, K: int) -> np.ndarray:
    """x (N, C), order (A,) with A = N*K -> xs (A, C)."""
    N, C = x.shape
    _check_order(order, N * K, f"gather from x {x.shape} with K={K}")
    out = np.empty((N * K, C), x.dtype)
    gather_rows(np.ascontiguousarray(x), order, int(K), out)
    return out


def combine(ys: np.ndarray, order: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ys (A, C) sorted by expert, weights (N, K) -> y (N, C)."""
    N, K = weights.shape
    if ys.ndim != 2 or ys.shape[0] != N * K:
        raise KernelInputError(f"combine: ys must be (A={N * K}, C) for weights {weights.shape}, found {ys.shape}")
    _check_order(order, N * K, "combine")
    weights = np.ascontiguousarray(weights, dtype=ys.dtype)
    out = np.empty((N, ys.shape[1]), ys.dtype)
    combine_rows(np.ascontiguousarray(ys), order, weights, out)
    return out


def combine_backward(dy: np.ndarray, ys: np.ndarray, order: np.ndarray, weights: np.ndarray):
    """The gradients of combine: dy (N, C) -> (dweights (N, K), dys (A, C))."""
    N, K = weights.shape
    if dy.shape != (N, ys.shape[1]) or ys.shape[0] != N * K:
        raise KernelInputError(f"combine_backward: need dy (N={N}, C) and ys (A={N * K}, C), found "
                               f"{dy.shape} and {ys.shape}")
    _check_order(order, N * K, "combine_backward")
    dtype = np.result_type(dy.dtype, ys.dtype)
    dweights, dys = np.empty((N, K), dtype), np.empty((N * K, ys.shape[1]), dtype)
    args = [np.ascontiguousarray(a, dtype=dtype) for a in (dy, ys)]
    combine_backward_rows(*args, order, np.ascontiguousarray(weights, dtype=dtype), dweights, dys)
    return dweights, dys
