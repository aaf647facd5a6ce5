"""Tracing: every op reports what it cost (FLOPs, bytes, wall time) into the trace being recorded.

Shape legend: B batch, T new positions, S key positions (cached + new), N = B*T tokens,
C d_model, H heads, G kv heads, R = H/G, D head dim, F ffn width, E experts, K top-k, V vocab,
I/O a weight's input/output width.

    with minimoe.trace() as t:
        logits = model(tokens)                    # or model.generate(...), or model.forward(x, kv)
    print(t.summary())
    t.to_dict()["totals"]                         # flops, weight_bytes, activation_bytes, ...
    t.to_json("trace.json")

How it works
------------
`ACTIVE` below is None, except inside `with trace()`. Every op in minimoe/nn/ does

    tr = tracing.ACTIVE                           # None unless a trace is recording
    t0 = tr.clock() if tr else 0.0
    y = matmul(x, w)                              # ... the op's own NumPy ...
    if tr: tr.matmul("attn.q", x, w, b, y, t0)

so with tracing off an op pays one module-attribute lookup and two tests of None: tens of
nanoseconds against the microseconds of its NumPy (docs/inspect.md has the measurement). With
tracing on, the op hands its real arrays to one of the recording methods of `Trace`, which reads
their shapes, dtypes and byte counts. Nothing is recomputed from the config.

Op names are the checkpoint's names without ".weight": the model sets `tr.layer = i` while it
runs layer i, so "attn.q" reported inside layer 0 is recorded as "layers.0.attn.q", next to
the parameter "layers.0.attn.q.weight". Expert e of a layer is "layers.i.moe.experts.{e}.gate".

What is counted (one multiply-add is 2 FLOPs)
----------------------------------------------
flops             the dot products, which is what "FLOPs per token" means in the scaling
                  literature (Kaplan et al., 2020) and in minimoe estimate:
   matmul           x (N, I) times a weight (O, I): 2*N*I*O, i.e. 2 per weight per token
   attention        scores q.k and values P.v: 2*B*H*T*S*D each, over the whole (T, S) block
                    the code computes. A prefill computes the full block and then masks the
                    upper triangle, so this counts the masked pairs too.
flops_causal      the same, counting only the (query, key) pairs the mask keeps: what an ideal
                  causal kernel does, and what minimoe.estimate counts. Equal to flops at decode.
elementwise_flops everything that is not a dot product, per element of the op's output:
                    rmsnorm 4 (square, sum, times rstd, times weight)   rope 3 (2 mul, 1 add)
                    scores: 1 per q element (the 1/sqrt(D) scale) + 1 per score (the mask)
                    softmax 5 (max, subtract, exp, sum, divide)
                    swiglu 6 (sigmoid 4, 2 mul), swiglu_oai 8       bias add 1
                    router top-k: the softmax/sigmoid (5 per score), 2 per chosen weight
                    MoE combine 2 per (token, slot, channel) (weight times output, add)
                  Per-row constants (a sqrt, a reciprocal) are not counted; the residual adds
                  in model.py (2*C per token per layer) belong to no op and are not counted.
                  These are conventions, kept apart so that `flops` stays exact.
params            the parameters the op applies to each token: a matmul's O*I plus its bias, a
                  norm's C, the C of the one embedding row a token looks up. Not summed.
weight_bytes      bytes of those parameters at their stored precision: ndarray.nbytes, or a
                  QTensor's packed bytes, scales included (q8_0 34 bytes per 32 weights, q4_0 18,
                  mxfp4 17). A matmul reads its weight once per call, for all N rows.
activation_bytes  activations read and written: the op's inputs plus its outputs, at their dtype,
                  not counting weights or the KV cache.
kv_cache_bytes    keys and values read from the KV cache (scores read K, P.v reads V), S
                  positions each. Without a KV cache k and v are activations.
time_s            the op's wall time (time.perf_counter around its NumPy).

Exact identity, checked by tests/test_trace.py: for a forward pass over N tokens,
    matmul flops    = 2 * N * (active_non_embedding - vector parameters)
where "vector parameters" are the norm scales, biases and sinks, which are applied elementwise
(1 FLOP each, in elementwise_flops) rather than multiplied through a matrix; and
    attention flops = sum over layers of 4 * B * H * D * T * S.
The backward pass is not traced.
"""
from __future__ import annotations

import functools
import json
import re
import time

import numpy as np

from minimoe.errors import MinimoeError

# The trace being recorded, or None. Ops read this one name; nothing else happens when it is None.
ACTIVE: "Trace | None" = None

# The numbers every record carries, summed over calls (except `params`, which is per call).
COUNTERS = ("flops", "flops_causal", "elementwise_flops", "weight_bytes", "activation_bytes",
            "kv_cache_bytes", "time_s")

# What an op is, for grouping: matmul (a weight), attention (q.k or P.v), and the rest.
KINDS = ("embedding", "matmul", "attention", "softmax", "norm", "rope", "activation", "route",
         "dispatch", "combine")

_EXPERT = re.compile(r"\.experts\.(\d+)\.")
_LAYER = re.compile(r"^layers\.(\d+)\.")


def trace() -> "Trace":
    """A new trace; use it as `with minimoe.trace() as t: ...`."""
    return Trace()


def nbytes(w) -> int:
    """Bytes of a weight as stored: a float array's nbytes or a QTensor's packed bytes."""
    return int(w.nbytes)


_FLOAT_NAMES = {np.dtype(np.float32): "fp32", np.dtype(np.float64): "fp64", np.dtype(np.float16): "fp16"}


def weight_format(w) -> str:
    """'fp32', 'q4_0', ...: the stored precision of a weight."""
    fmt = getattr(w, "fmt", None)
    if fmt is not None:
        return str(fmt)
    return _FLOAT_NAMES.get(w.dtype) or str(w.dtype)


@functools.lru_cache(maxsize=None)
def component_of(name: str) -> str:
    """Which part of the model an op belongs to, with the component names of minimoe.params
    (embedding, attention, router, experts, shared_experts, ffn, norms, head)."""
    from minimoe.params import component
    try:
        return component(name + ".weight")
    except KeyError:
        return "other"


class Trace:
    """What every op of the traced forward passes cost, op by op and forward pass by forward pass.

    ops      {full op name: record} in the order first seen; a record holds name, kind,
             component, layer, expert, fmt (of its weight), calls, tokens (rows processed),
             params (per call) and the COUNTERS summed over calls.
    steps    one dict per forward pass (a prefill, each decode step): its token ids (B, T), start
             position, the COUNTERS summed over its ops, and its routing per MoE layer.
    wall_s   wall time inside `with` (the ops' time_s plus everything between them).
    """

    def __init__(self):
        self.ops: dict[str, dict] = {}
        self.steps: list[dict] = []
        self.layer: int | None = None      # set by Model.forward while it runs layer i
        self.wall_s = 0.0
        self._t_enter = None

    # --- recording on and off --------------------------------------------------------------------
    def __enter__(self) -> "Trace":
        global ACTIVE
        if ACTIVE is not None:
            raise MinimoeError("a trace is already recording; traces do not nest "
                               "(finish the outer `with minimoe.trace()` first)")
        ACTIVE = self
        self._t_enter = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        global ACTIVE
        ACTIVE = None
        self.layer = None
        self.wall_s += time.perf_counter() - self._t_enter

    @staticmethod
    def clock() -> float:
        return time.perf_counter()

    # --- the one place records are added ---------------------------------------------------------
    def _step(self) -> dict:
        if not self.steps:                 # an op called on its own, outside Model.forward
            self._new_step(None)
        return self.steps[-1]

    def _new_step(self, tokens) -> dict:
        step = {"tokens": None if tokens is None else np.array(tokens), "start": None,
                "n_tokens": 0 if tokens is None else int(np.size(tokens)), "routing": {}}
        step.update({c: 0 for c in COUNTERS})
        self.steps.append(step)
        return step

    def _add(self, name: str, kind: str, t0: float, rows: int, w=None, t1: float | None = None,
             **numbers) -> float:
        """Add one call of op `name` (relative to the current layer), timed from t0 to t1 (default:
        now). Returns perf_counter() at the end of the bookkeeping, for an op that times several
        parts back to back."""
        dt = (time.perf_counter() if t1 is None else t1) - t0
        full = name if self.layer is None else f"layers.{self.layer}.{name}"
        rec = self.ops.get(full)
        if rec is None:
            m = _EXPERT.search(full + ".")
            rec = self.ops[full] = {
                "name": full, "kind": kind, "component": component_of(full), "layer": self.layer,
                "expert": int(m.group(1)) if m else None,
                "fmt": None if w is None else weight_format(w),
                "calls": 0, "tokens": 0, "params": int(numbers.get("params", 0)),
                **{c: 0 for c in COUNTERS}}
        numbers.pop("params", None)
        numbers.setdefault("flops_causal", numbers.get("flops", 0))
        numbers["time_s"] = dt
        rec["calls"] += 1
        rec["tokens"] += int(rows)
        step = self._step()
        for key, value in numbers.items():
            rec[key] += value
            step[key] += value
        return time.perf_counter()

    # --- recording methods, one per kind of op (each reads the op's own arrays) --------------------
    def embedding(self, tokens: np.ndarray, weight, x: np.ndarray, t0: float) -> float:
        """tokens (B, T) looked up in weight (V, C) -> x (B, T, C). Starts a new forward pass."""
        t1 = time.perf_counter()
        self.layer = None
        self._new_step(tokens)
        return self._add("embed", "embedding", t0, tokens.size, weight, t1, params=x.shape[-1],
                         weight_bytes=x.nbytes,                          # the N rows read
                         activation_bytes=tokens.nbytes + x.nbytes)

    def matmul(self, name: str, x: np.ndarray, w, b, y: np.ndarray, t0: float) -> float:
        """x (..., I) @ w (O, I).T (+ b (O,)) -> y (..., O)."""
        O, I = w.shape[-2], w.shape[-1]
        N = x.size // I
        params, wbytes = O * I, nbytes(w)
        if b is not None:
            params, wbytes = params + b.size, wbytes + b.nbytes
        return self._add(name, "matmul", t0, N, w, params=params, flops=2 * N * I * O,
                         elementwise_flops=0 if b is None else y.size, weight_bytes=wbytes,
                         activation_bytes=x.nbytes + y.nbytes)

    def norm(self, name: str, x: np.ndarray, weight, y: np.ndarray, t0: float) -> float:
        """RMSNorm of x (..., C) with weight (C,) -> y (..., C)."""
        return self._add(name, "norm", t0, x.size // x.shape[-1], weight, params=weight.size,
                         elementwise_flops=4 * x.size, weight_bytes=nbytes(weight),
                         activation_bytes=x.nbytes + y.nbytes)

    def rope(self, name: str, inputs: tuple, outputs: tuple, cos: np.ndarray, rows: int,
             t0: float) -> float:
        """Rotations of q (B, H, T, D) and k (B, G, T, D) by cos/sin (T, D), for `rows` tokens."""
        n = sum(a.size for a in inputs)
        return self._add(name, "rope", t0, rows, elementwise_flops=3 * n,
                         activation_bytes=sum(a.nbytes for a in inputs + outputs) + 2 * cos.nbytes)

    def attention_scores(self, q: np.ndarray, k: np.ndarray, scores: np.ndarray, mask: np.ndarray,
                         cached: bool, t0: float) -> float:
        """scores (B, G, R, T, S) = q (B, G, R, T, D) / sqrt(D) . k (B, G, S, D), plus the mask;
        mask (T, S) True where a pair is kept. k comes from the KV cache if `cached`."""
        B, G, R, T, D = q.shape
        S = k.shape[-2]
        step = self._step()
        if step["start"] is None:
            step["start"] = S - T
        kv = k.nbytes if cached else 0
        return self._add("attn.scores", "attention", t0, B * T, flops=2 * B * G * R * T * S * D,
                         flops_causal=2 * B * G * R * D * int(mask.sum()),
                         elementwise_flops=q.size + scores.size, kv_cache_bytes=kv,
                         activation_bytes=q.nbytes + scores.nbytes + (0 if cached else k.nbytes))

    def softmax(self, name: str, x: np.ndarray, y: np.ndarray, t0: float, rows: int | None = None,
                weight=None) -> float:
        """softmax over the last axis of x -> y; `weight`: attention sinks (H,) joining it, if any."""
        return self._add(name, "softmax", t0, x.size // x.shape[-1] if rows is None else rows, weight,
                         params=0 if weight is None else weight.size,
                         weight_bytes=0 if weight is None else nbytes(weight),
                         elementwise_flops=5 * x.size, activation_bytes=x.nbytes + y.nbytes)

    def attention_values(self, probs: np.ndarray, v: np.ndarray, y: np.ndarray, mask: np.ndarray,
                         cached: bool, t0: float) -> float:
        """y (B, G, R, T, D) = probs (B, G, R, T, S) . v (B, G, S, D)."""
        B, G, R, T, S = probs.shape
        D = v.shape[-1]
        kv = v.nbytes if cached else 0
        return self._add("attn.pv", "attention", t0, B * T, flops=2 * B * G * R * T * S * D,
                         flops_causal=2 * B * G * R * D * int(mask.sum()), kv_cache_bytes=kv,
                         activation_bytes=probs.nbytes + y.nbytes + (0 if cached else v.nbytes))

    def elementwise(self, name: str, kind: str, flops_per_element: int, inputs: tuple, outputs: tuple,
                    rows: int, t0: float) -> float:
        """An elementwise op (an activation, MoE dispatch or combine): FLOPs per output element."""
        return self._add(name, kind, t0, rows,
                         elementwise_flops=flops_per_element * sum(a.size for a in outputs),
                         activation_bytes=sum(a.nbytes for a in inputs + outputs))

    def route(self, name: str, logits: np.ndarray, probs: np.ndarray, experts: np.ndarray,
              weights: np.ndarray, stats: dict, t0: float) -> float:
        """The router's choice: logits (N, E) -> experts (N, K), weights (N, K), and its own
        statistics (tokens_per_expert (E,), prob_mass (E,)), kept per layer for the routing views."""
        t1 = time.perf_counter()
        step = self._step()
        step["routing"][self.layer] = {
            "experts": experts.copy(), "weights": weights.copy(), "probs": probs.copy(),
            "tokens_per_expert": stats["tokens_per_expert"].copy(),
            "prob_mass": stats["prob_mass"].copy()}
        return self._add(name, "route", t0, logits.shape[0], t1=t1,
                         elementwise_flops=5 * logits.size + 2 * weights.size,
                         activation_bytes=logits.nbytes + probs.nbytes + experts.nbytes + weights.nbytes)

    # --- reading it back ---------------------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        """Tokens run through the model (B*T summed over forward passes)."""
        return sum(s["n_tokens"] for s in self.steps)

    def totals(self) -> dict:
        """The COUNTERS summed over every op, plus matmul/attention FLOPs apart, tokens and wall time."""
        t = {c: 0 for c in COUNTERS}
        t["matmul_flops"] = t["attention_flops"] = 0
        for r in self.ops.values():
            for c in COUNTERS:
                t[c] += r[c]
            if r["kind"] in ("matmul", "attention"):
                t[r["kind"] + "_flops"] += r["flops"]
        t.update(tokens=self.n_tokens, forward_passes=len(self.steps), wall_s=self.wall_s)
        return t

    def per_token(self) -> dict:
        """Totals divided by the tokens run (for a one-token decode step: exactly that token's)."""
        t, n = self.totals(), max(self.n_tokens, 1)
        return {k: t[k] / n for k in (*COUNTERS, "matmul_flops", "attention_flops")}

    def group(self, key: str) -> dict:
        """COUNTERS summed by a record field: "component", "kind", "layer" or "expert"."""
        out: dict = {}
        for r in self.ops.values():
            g = out.setdefault(r[key], {"calls": 0, "tokens": 0, **{c: 0 for c in COUNTERS}})
            for c in ("calls", "tokens", *COUNTERS):
                g[c] += r[c]
        return out

    def by_expert(self) -> dict:
        """{(layer, expert): counters} over each expert's gate, up, down and activation, with
        `tokens` = the tokens routed to it."""
        out: dict = {}
        for r in self.ops.values():
            if r["expert"] is None:
                continue
            g = out.setdefault((r["layer"], r["expert"]), {"params": 0, **{c: 0 for c in COUNTERS}})
            for c in COUNTERS:
                g[c] += r[c]
            g["params"] += r["params"]
            if r["kind"] == "matmul" and r["name"].endswith(".gate"):
                g["tokens"] = r["tokens"]
        return dict(sorted(out.items()))

    def routing(self) -> dict:
        """Per MoE layer, over all traced forward passes: tokens_per_expert (E,) and prob_mass (E,)
        summed, experts (N, K), weights (N, K) and probs (N, E) stacked in token order."""
        out: dict = {}
        for step in self.steps:
            for layer, r in step["routing"].items():
                acc = out.setdefault(layer, {"tokens_per_expert": 0, "prob_mass": 0,
                                             "experts": [], "weights": [], "probs": []})
                acc["tokens_per_expert"] = acc["tokens_per_expert"] + r["tokens_per_expert"]
                acc["prob_mass"] = acc["prob_mass"] + r["prob_mass"]
                for k in ("experts", "weights", "probs"):
                    acc[k].append(r[k])
        for acc in out.values():
            for k in ("experts", "weights", "probs"):
                acc[k] = np.concatenate(acc[k], axis=0)
        return dict(sorted(out.items()))

    def token_routing(self) -> list[dict]:
        """One entry per traced token, in order: step, batch row, position, token id, and for each
        MoE layer the chosen experts and their weights."""
        out = []
        for s, step in enumerate(self.steps):
            if step["tokens"] is None:
                continue
            tokens = step["tokens"].reshape(-1, step["tokens"].shape[-1])   # (B, T)
            B, T = tokens.shape
            for n in range(B * T):
                b, t = divmod(n, T)
                layers = {i: {"experts": r["experts"][n].tolist(),
                              "weights": [float(w) for w in r["weights"][n]]}
                          for i, r in step["routing"].items()}
                out.append({"step": s, "batch": b, "position": (step["start"] or 0) + t,
                            "token": int(tokens[b, t]), "layers": layers})
        return out

    # --- export ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Everything as plain JSON types: ops, steps, routing per token, totals, per_token."""
        steps = [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in s.items()
                  if k != "routing"} for s in self.steps]
        routing = {str(i): {"tokens_per_expert": r["tokens_per_expert"].tolist(),
                            "prob_mass": [float(p) for p in r["prob_mass"]]}
                   for i, r in self.routing().items()}
        return {"totals": _plain(self.totals()), "per_token": _plain(self.per_token()),
                "ops": [_plain(r) for r in self.ops.values()], "steps": _plain(steps),
                "by_component": _plain(self.group("component")),
                "expert_load": routing, "token_routing": self.token_routing()}

    def to_json(self, path: str) -> None:
        """Write to_dict() as JSON, atomically (a crash never leaves half a file)."""
        from minimoe.io.atomic import atomic_write_text
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    def summary(self, fold_experts: bool = True) -> str:
        """A table of every op: FLOPs, elementwise FLOPs, weight/activation/KV bytes, time. With
        fold_experts, each layer's experts are one row ("layers.i.moe.experts.*", n of E ran)."""
        rows: dict[str, dict] = {}
        for r in self.ops.values():
            name = r["name"]
            if fold_experts and r["expert"] is not None:
                name = _EXPERT.sub(".experts.*.", name + ".")[:-1]
                name = name.rsplit(".", 1)[0]           # layers.i.moe.experts.*
            g = rows.setdefault(name, {"calls": 0, "fmts": set(), "experts": set(),
                                       **{c: 0 for c in COUNTERS}})
            if r["fmt"]:
                g["fmts"].add(r["fmt"])
            for c in COUNTERS:
                g[c] += r[c]
            if r["expert"] is not None:
                g["experts"].add(r["expert"])
                g["calls"] = max(g["calls"], r["calls"])
            else:
                g["calls"] += r["calls"]
        t = self.totals()
        head = (f"{'op':<31}{'fmt':>9}{'FLOPs':>10}{'elem':>9}{'weight B':>10}{'act B':>9}"
                f"{'KV B':>9}{'time ms':>9}{'time%':>7}")
        lines = [head, "-" * len(head)]
        op_time = max(t["time_s"], 1e-12)
        for name, g in rows.items():
            label = name if not g["experts"] else f"{name} ({len(g['experts'])} ran)"
            fmt = "+".join(sorted(g["fmts"]))        # "fp32+q4_0": a down projection left float
            lines.append(f"{label:<31}{fmt:>9}{_si(g['flops']):>10}"
                         f"{_si(g['elementwise_flops']):>9}{_si(g['weight_bytes']):>10}"
                         f"{_si(g['activation_bytes']):>9}{_si(g['kv_cache_bytes']):>9}"
                         f"{1e3 * g['time_s']:>9.3f}{100 * g['time_s'] / op_time:>6.1f}%")
        lines.append("-" * len(head))
        lines.append(f"{'total':<31}{'':>9}{_si(t['flops']):>10}{_si(t['elementwise_flops']):>9}"
                     f"{_si(t['weight_bytes']):>10}{_si(t['activation_bytes']):>9}"
                     f"{_si(t['kv_cache_bytes']):>9}{1e3 * t['time_s']:>9.3f}{100.0:>6.1f}%")
        n = max(t["tokens"], 1)
        lines.append(f"{t['tokens']} token(s) in {t['forward_passes']} forward pass(es); per token: "
                     f"{t['flops'] / n:,.0f} FLOPs ({t['matmul_flops'] / n:,.0f} matmul + "
                     f"{t['attention_flops'] / n:,.0f} attention), {t['weight_bytes'] / n:,.0f} weight "
                     f"bytes; ops {1e3 * t['time_s']:.2f} ms of {1e3 * t['wall_s']:.2f} ms wall")
        return "\n".join(lines)

    def __repr__(self) -> str:
        t = self.totals()
        return (f"Trace({len(self.ops)} ops, {t['tokens']} tokens, {t['flops']:,} FLOPs, "
                f"{t['weight_bytes']:,} weight bytes)")


def _si(x: float) -> str:
    """1234567 -> '1.23M'."""
    x = float(x)
    if x == 0:
        return "0"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def _plain(x):
    """numpy scalars/arrays, sets and tuples -> JSON types."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x
