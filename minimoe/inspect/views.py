"""Derived views of a trace: active parameters, arithmetic intensity, where the time went, and
how evenly the router spread the tokens.

Shape legend: L layers, E experts, K top-k, N tokens traced.

    with minimoe.trace() as t:
        model(tokens)
    active_params(t, model)           # per token and per layer: parameters touched vs total
    arithmetic_intensity(t)           # per op: FLOPs per byte, against this machine's roofline
    time_shares(t)                    # experts / attention / other
    expert_load(t)                    # per layer: tokens per expert, max/mean, coeff. of variation

Every number here is read from the trace (which the ops filled) or from the model's own arrays;
none is recomputed from a formula.
"""
from __future__ import annotations

import math
import re

import numpy as np

from minimoe.inspect.tracing import COUNTERS, Trace


def _layer_params(model, i: int) -> int:
    """Parameters stored under layers.{i}. (QTensors count their logical shape)."""
    p = f"layers.{i}."
    return sum(math.prod(a.shape) for name, a in model.params.items() if name.startswith(p))


def active_params(trace: Trace, model=None) -> dict:
    """Parameters each traced token touched, against the model's total.

    per_layer[i]: active_per_token (the layer's non-expert ops' parameters, plus the parameters
    of the K experts this token was routed to; min/mean/max over tokens), experts_ran (experts
    that got at least one token), and with a model, total (all of the layer's parameters).
    per_token: the same over the whole model. "non_embedding" leaves out the embedding row the
    token looked up; it equals count_params()["active_non_embedding"] (tests/test_trace.py).
    """
    shared: dict = {}                       # layer -> params every token reads (not experts)
    for r in trace.ops.values():
        if r["expert"] is None:
            shared[r["layer"]] = shared.get(r["layer"], 0) + r["params"]
    experts = trace.by_expert()                          # (layer, e) -> {"params", ...}
    per_token_layers: dict[int, list[int]] = {}
    for layer, r in trace.routing().items():
        chosen = r["experts"]                            # (N, K)
        cost = np.array([experts[(layer, e)]["params"] if (layer, e) in experts else 0
                         for e in range(r["tokens_per_expert"].shape[0])])  # (E,)
        per_token_layers[layer] = (cost[chosen].sum(axis=1) + shared.get(layer, 0)).tolist()  # (N,)
    layers = sorted(k for k in shared if k is not None)
    rows = []
    for i in layers:
        touched = np.array(per_token_layers.get(i, [shared[i]]))
        row = {"layer": i, "active_per_token": _stats(touched),
               "experts_ran": sum(1 for (layer, _) in experts if layer == i)}
        if model is not None:
            row["total"] = _layer_params(model, i)
            row["active_fraction"] = row["active_per_token"]["mean"] / row["total"]
        rows.append(row)
    embedding_row = trace.ops["embed"]["params"] if "embed" in trace.ops else 0
    outside = sum(v for k, v in shared.items() if k is None) - embedding_row  # final norm, head
    non_emb = outside + sum(r["active_per_token"]["mean"] for r in rows)
    out = {"per_layer": rows,
           "per_token": {"non_embedding": non_emb, "embedding_row": embedding_row,
                         "with_embedding_row": non_emb + embedding_row}}
    if model is not None:
        c = model.param_counts()
        out["per_token"].update(total=c["total"], count_params_active=c["active"],
                                count_params_active_non_embedding=c["active_non_embedding"],
                                active_fraction=non_emb / c["total"])
    return out


def _stats(a: np.ndarray) -> dict:
    return {"min": int(a.min()), "mean": float(a.mean()), "max": int(a.max())}


def fold_name(name: str) -> str:
    """"layers.3.moe.experts.5.gate" -> "moe.experts.*.gate": the op, whatever layer or expert."""
    name = re.sub(r"^layers\.\d+\.", "", name)
    return re.sub(r"\.experts\.\d+\.", ".experts.*.", name)


def folded_ops(trace: Trace) -> dict:
    """The trace's op records summed over layers and experts, keyed by fold_name."""
    out: dict = {}
    for r in trace.ops.values():
        key = fold_name(r["name"])
        g = out.setdefault(key, {"name": key, "kind": r["kind"], "component": r["component"],
                                 "calls": 0, **{c: 0 for c in COUNTERS}})
        for c in ("calls", *COUNTERS):
            g[c] += r[c]
    return out


def arithmetic_intensity(trace: Trace, machine: dict | None = None, fold: bool = False) -> list[dict]:
    """Per op: all its FLOPs (dot products and elementwise) per byte moved (weights, activations,
    KV cache), its achieved GFLOP/s, and where it sits against this machine's roofline:
    attainable = min(peak, intensity * bandwidth); "memory"-bound left of the ridge point
    peak / bandwidth, "compute"-bound right of it. `machine` defaults to minimoe.inspect.machine.
    With fold, one row per op summed over layers and experts (see fold_name)."""
    if machine is None:
        from minimoe.inspect.machine import machine as measured
        machine = measured()
    bw, peak = machine["bandwidth_gbs"], machine["peak_gflops"]
    ridge = peak / bw                                   # FLOPs per byte
    rows = []
    for r in (folded_ops(trace) if fold else trace.ops).values():
        flops = r["flops"] + r["elementwise_flops"]
        nbytes = r["weight_bytes"] + r["activation_bytes"] + r["kv_cache_bytes"]
        if flops == 0 or nbytes == 0:
            continue
        ai = flops / nbytes
        rows.append({"name": r["name"], "kind": r["kind"], "component": r["component"],
                     "flops": flops, "bytes": nbytes, "intensity": ai,
                     "achieved_gflops": flops / r["time_s"] / 1e9 if r["time_s"] > 0 else 0.0,
                     "attainable_gflops": min(peak, ai * bw),
                     "bound": "memory" if ai < ridge else "compute", "time_s": r["time_s"]})
    return rows


# Which components count as "experts" and "attention" in the time shares.
EXPERTS = ("experts", "shared_experts", "ffn")          # the FFN part: routed, shared, or dense
ATTENTION = ("attention",)


def time_shares(trace: Trace) -> dict:
    """Fractions of the traced wall time in the experts (routed, shared, or a dense FFN), in
    attention (projections, rope, scores, softmax, P.v), and everything else: router, norms,
    embedding, head, and `untracked` (Python between the ops, residual adds, the trace's own
    bookkeeping). Also the seconds per component."""
    by = {k: v["time_s"] for k, v in trace.group("component").items()}
    wall = max(trace.wall_s, sum(by.values()), 1e-12)
    untracked = wall - sum(by.values())
    experts = sum(by.get(c, 0.0) for c in EXPERTS)
    attention = sum(by.get(c, 0.0) for c in ATTENTION)
    return {"experts": experts / wall, "attention": attention / wall,
            "other": (wall - experts - attention) / wall,
            "seconds": {**by, "untracked": untracked}, "wall_s": wall}


def expert_load(trace: Trace) -> list[dict]:
    """Per MoE layer: tokens_per_expert (E,) over everything traced, the imbalance max/mean
    (1 = perfectly even; E/K = every token on the same K experts) and the coefficient of
    variation std/mean (0 = even), plus the router's probability mass per expert."""
    rows = []
    for layer, r in trace.routing().items():
        counts = np.asarray(r["tokens_per_expert"], dtype=np.float64)   # (E,)
        mean = counts.mean()
        rows.append({"layer": layer, "tokens_per_expert": r["tokens_per_expert"].tolist(),
                     "prob_mass": [float(p) for p in r["prob_mass"]],
                     "max_over_mean": float(counts.max() / mean) if mean else float("nan"),
                     "cv": float(counts.std() / mean) if mean else float("nan")})
    return rows


def format_views(trace: Trace, model=None, machine: dict | None = None) -> str:
    """The derived views as text: active parameters, time shares, expert load, intensity."""
    lines = []
    a = active_params(trace, model)
    pt = a["per_token"]
    lines.append("active parameters per token (measured from the ops):")
    line = f"  non-embedding {pt['non_embedding']:,.0f} + embedding row {pt['embedding_row']:,}"
    if model is not None:
        line += (f"   of {pt['total']:,} total ({100 * pt['active_fraction']:.1f}%);"
                 f" count_params active_non_embedding = {pt['count_params_active_non_embedding']:,}")
    lines.append(line)
    for r in a["per_layer"]:
        s = r["active_per_token"]
        tot = f" of {r['total']:,} ({100 * r['active_fraction']:.1f}%)" if "total" in r else ""
        lines.append(f"  layer {r['layer']}: {s['mean']:,.0f}{tot}, {r['experts_ran']} experts ran")
    ts = time_shares(trace)
    lines.append(f"time: experts {100 * ts['experts']:.1f}%  attention {100 * ts['attention']:.1f}%  "
                 f"other {100 * ts['other']:.1f}%  (of {1e3 * ts['wall_s']:.2f} ms wall)")
    load = expert_load(trace)
    if load:
        lines.append("expert load (tokens per expert; max/mean; coefficient of variation):")
        for r in load:
            lines.append(f"  layer {r['layer']}: {r['tokens_per_expert']}  max/mean "
                         f"{r['max_over_mean']:.2f}  cv {r['cv']:.2f}")
    if machine is not None:
        lines.append(f"roofline: bandwidth {machine['bandwidth_gbs']:.1f} GB/s, peak "
                     f"{machine['peak_gflops']:.1f} GFLOP/s, ridge "
                     f"{machine['peak_gflops'] / machine['bandwidth_gbs']:.1f} FLOPs/byte "
                     f"({machine['source']})")
        ops = sorted(arithmetic_intensity(trace, machine, fold=True), key=lambda r: -r["time_s"])[:8]
        lines.append(f"  {'op, over all layers (8 slowest)':<34}{'FLOP/B':>8}{'GFLOP/s':>9}{'bound':>8}")
        for r in ops:
            lines.append(f"  {r['name']:<34}{r['intensity']:>8.2f}{r['achieved_gflops']:>9.2f}"
                         f"{r['bound']:>8}")
    return "\n".join(lines)
