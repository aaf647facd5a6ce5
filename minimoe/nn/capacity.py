"""Expert capacity and token dropping (GShard, Lepikhin et al. 2020; Switch Transformer, Fedus et al. 2021).

Shape legend: N = G*T tokens in G sequences of T, C d_model, E experts, S slots per token (K for
token choice, E for expert choice), A = N*S assignments, Cap the capacity of an expert.

An accelerator runs each expert on a fixed-size buffer: `capacity` rows per sequence,

    capacity = ceil(factor * T * K / E)       (factor 1.0: exactly even routing fills every buffer)

When more of a sequence's tokens choose expert e than its buffer holds, the extra assignments are
*dropped*: they produce nothing, and a token whose every choice was dropped leaves the MoE with
y = 0, so it passes on unchanged through the residual connection (x + 0). When fewer choose it,
the rest of its buffer is padding: rows of zeros that are computed all the same. So the expert
FLOPs are E * G * capacity rows whatever the routing, which is what the trace counts.

Which assignments an over-full expert keeps (`policy`):
    "score"     the highest router probabilities first (the token wants it most)
    "position"  first choices before second choices, each in token order (GShard, Switch)

The buffers are one array `slots` (E, G, Cap): slots[e, g, c] is the assignment a = n*S + s in
row c of expert e's buffer for sequence g, or -1 for padding. Expert e's rows are contiguous,
so the stacked-expert matmul (minimoe/nn/linear.py) runs them as it runs the dispatch form's.

    slots, kept = dispatch_capacity(experts, priority, E, T, cap, policy)   the buffers
    xs = gather_slots(x, slots, S)            (E*G*Cap, C), zero rows for padding
    y  = combine_slots(ys, slots, weights)    (N, C): sum over kept assignments of weight * output
and for the backward pass (minimoe/nn/moe.py):
    dweights, dys = combine_slots_backward(dy, ys, slots, weights)
    dx = combine_slots(dxs, slots, ones)      each token's kept gradients summed back

Expert choice (minimoe/nn/router.py) fills the same buffers by letting each expert pick its tokens.
These leaves have NumPy only (no Numba kernel).
"""
from __future__ import annotations

import math

import numpy as np

from minimoe.kernels.dispatch import Leaf


def capacity(T: int, K: int, E: int, factor: float) -> int:
    """Rows per sequence of each expert's buffer: ceil(factor * T * K / E), between 1 and T."""
    return int(min(T, max(1, math.ceil(factor * T * K / E))))


def dispatch_capacity(experts: np.ndarray, priority: np.ndarray, E: int, T: int, cap: int,
                      policy: str = "score"):
    """experts (N, S), priority (N, S) -> (slots (E, G, cap) int64, -1 for padding; kept (N, S) bool).

    Within each (sequence, expert), assignments are ranked by the policy (see the module doc) and
    the first `cap` are kept."""
    N, S = experts.shape
    G = N // T
    a = np.arange(N * S)                                 # (A,) assignment a = n*S + s
    e = experts.ravel()                                  # (A,) its expert
    g = a // S // T                                      # (A,) its sequence
    if policy == "score":
        rank_key = -priority.ravel()                     # higher probability first
    else:
        rank_key = (a % S) * N + a // S                  # first choices first, then token order
    order = np.lexsort((a, rank_key, e, g))              # (A,) by sequence, expert, rank (ties: a)
    group = g[order] * E + e[order]                      # (A,) sorted (sequence, expert) ids
    start = np.searchsorted(group, group, side="left")   # (A,) where each one's group starts
    row = np.arange(N * S) - start                       # (A,) its row in the expert's buffer
    keep = row < cap                                     # (A,) the buffer has room
    slots = np.full((G, E, cap), -1, dtype=np.int64)
    slots[g[order][keep], e[order][keep], row[keep]] = order[keep]
    kept = np.zeros(N * S, dtype=bool)
    kept[order[keep]] = True
    return np.ascontiguousarray(slots.transpose(1, 0, 2)), kept.reshape(N, S)  # (E, G, cap), (N, S)


def gather_slots(x: np.ndarray, slots: np.ndarray, S: int) -> np.ndarray:
    """xs[r] = x[slots[r] // S] for each buffer row r, zeros for padding: x (N, C) -> (E*G*Cap, C)."""
    flat = slots.reshape(-1)                             # (R,) R = E*G*Cap buffer rows
    filled = flat >= 0
    xs = np.zeros((flat.size, x.shape[1]), x.dtype)      # (R, C)
    xs[filled] = x[flat[filled] // S]                    # the token of each filled row
    return xs


def _by_assignment(ys: np.ndarray, slots: np.ndarray, N: int, S: int) -> np.ndarray:
    """The buffer rows put back in (token, slot) order: (R, C) -> (N, S, C), zeros where dropped."""
    flat = slots.reshape(-1)
    filled = flat >= 0
    y_assign = np.zeros((N * S, ys.shape[1]), ys.dtype)  # (A, C) dropped assignments stay 0
    y_assign[flat[filled]] = ys[filled]
    return y_assign.reshape(N, S, -1)


def combine_slots(ys: np.ndarray, slots: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """y[n] = sum_s weights[n, s] * (the output of assignment n*S + s, or 0 if dropped):
    ys (R, C) -> y (N, C)."""
    N, S = weights.shape
    return np.einsum("ns,nsc->nc", weights, _by_assignment(ys, slots, N, S))  # (N, S).(N, S, C) -> (N, C)


def combine_slots_backward(dy: np.ndarray, ys: np.ndarray, slots: np.ndarray, weights: np.ndarray):
    """dy (N, C) -> (dweights (N, S) = output . dy, 0 where dropped; dys (R, C) = weight * dy,
    0 for padding)."""
    N, S = weights.shape
    dweights = np.einsum("nsc,nc->ns", _by_assignment(ys, slots, N, S), dy)   # (N, S)
    dy_assign = (weights[:, :, None] * dy[:, None, :]).reshape(N * S, -1)     # (A, C)
    flat = slots.reshape(-1)
    filled = flat >= 0
    dys = np.zeros((flat.size, dy.shape[1]), dy_assign.dtype)                # (R, C)
    dys[filled] = dy_assign[flat[filled]]
    return dweights, dys


DISPATCH_CAPACITY = Leaf("dispatch_capacity", dispatch_capacity)
GATHER_SLOTS = Leaf("gather_slots", gather_slots)
COMBINE_SLOTS = Leaf("combine_slots", combine_slots)
COMBINE_SLOTS_BACKWARD = Leaf(None, combine_slots_backward)
