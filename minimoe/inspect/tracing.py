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
`ACTIVE` below is None, except inside `with trace()`. Nothing in minimoe/nn/ reads it: every hot
op of a layer is a leaf (minimoe/kernels/dispatch.py), and the leaf, after running the Numba kernel
or its NumPy twin, does

    tr = tracing.ACTIVE                           # None unless a trace is recording
    if tr: tr.record(kind, name, args, out, t0)   # the call's own arrays

so with tracing off a leaf pays one module-attribute lookup and one test of None. With tracing
on, the recorder of that kind (`_matmul`, `_norm`, ...) reads the real arrays' shapes, dtypes and
byte counts. Nothing is recomputed from the config.

Op names are the checkpoint's names without ".weight": Model.forward sets `tr.layer = i` while it
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
        step = {"tokens": None if tokens is None else np.array(tokens), "start": None, "cached": False,
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

    # --- what the model and the leaves report ------------------------------------------------------
    def begin_forward(self, tokens: np.ndarray, start: int, cached: bool) -> None:
        """Model.forward starts a forward pass over tokens (B, T) at position `start`; `cached`:
        its keys and values go through a KV cache (reading them is KV-cache traffic)."""
        self.layer = None
        step = self._new_step(tokens)
        step["start"], step["cached"] = int(start), bool(cached)

    def record(self, kind: str, name: str, args: tuple, out, t0: float) -> None:
        """One call of a leaf (minimoe/kernels/dispatch.py): its kind, its name within the layer,
        its arguments and its outputs, timed from t0."""
        getattr(self, "_" + kind)(name, *args, out=out, t0=t0)

    # --- one recorder per kind of leaf; each reads the op's own arrays ------------------------------
    def _embedding(self, name, tokens, weight, out, t0):
        """tokens (B, T) looked up in weight (V, C) -> out (B, T, C)."""
        self._add(name, "embedding", t0, tokens.size, weight, params=out.shape[-1],
                  weight_bytes=out.nbytes,                                   # the N rows read
                  activation_bytes=tokens.nbytes + out.nbytes)

    def _matmul(self, name, x, w, b, experts, out, t0, t1=None):
        """x (N, I) @ w (O, I).T (+ b (O,)) -> out (N, O). With a stack w (E, O, I) and experts (N,),
        one record per expert that ran: "moe.experts.gate" -> "moe.experts.3.gate"."""
        t1 = time.perf_counter() if t1 is None else t1
        if experts is None:
            self._matmul_one(name, x, w, b, out.size, t0, t1)
            return
        ids, counts = np.unique(experts, return_counts=True)
        prefix, _, suffix = name.rpartition(".")
        start, span, rows = t0, t1 - t0, 0
        for e, n in zip(ids, counts):                    # the call's time, shared out by rows
            rows += n
            t_e = start + span * rows / len(experts)
            self._matmul_one(f"{prefix}.{e}.{suffix}", x[:n], w[e], None if b is None else b[e],
                             n * w.shape[-2], t0, t_e)
            t0 = t_e

    def _matmuls(self, names, x, ws, bs, experts, out, t0):
        """Several weights times the same x in one call (nn/linear.py's matmul_many): names, ws, bs
        and out are one per weight; each is recorded as its own matmul, the call's time shared out
        by the weights' sizes."""
        t1 = time.perf_counter()
        total = sum(w.shape[-2] for w in ws)
        start, span, rows = t0, t1 - t0, 0
        for name, w, b, y in zip(names, ws, bs, out):
            rows += w.shape[-2]
            t_w = start + span * rows / total
            self._matmul(name, x, w, b, experts, out=y, t0=t0, t1=t_w)
            t0 = t_w

    def _matmul_one(self, name, x, w, b, out_size, t0, t1):
        O, I = w.shape[-2], w.shape[-1]
        N = x.shape[0]
        params, wbytes = O * I, nbytes(w)
        if b is not None:
            params, wbytes = params + b.size, wbytes + b.nbytes
        self._add(name, "matmul", t0, N, w, t1, params=params, flops=2 * N * I * O,
                  elementwise_flops=0 if b is None else out_size, weight_bytes=wbytes,
                  activation_bytes=x.nbytes + out_size * x.itemsize)

    def _norm(self, name, x, weight, eps, out, t0):
        """RMSNorm of x (..., C) with weight (C,) -> out (y, xhat, rstd)."""
        self._add(name, "norm", t0, x.size // x.shape[-1], weight, params=weight.size,
                  elementwise_flops=4 * x.size, weight_bytes=nbytes(weight),
                  activation_bytes=x.nbytes + out[0].nbytes)

    def _rope(self, name, x, cos, sin, out, t0):
        """Rotation of x (B, H, T, D) by cos/sin (T, D)."""
        self._add(name, "rope", t0, x.size // (x.shape[-1] * (x.shape[1] if x.ndim == 4 else 1)),
                  elementwise_flops=3 * x.size, activation_bytes=x.nbytes + out.nbytes + 2 * cos.nbytes)

    def _attention(self, name, q, k, v, window, sinks, out, t0):
        """q (B, H, T, D) against k, v (B, G, S, D): three records, the scores q.k (with the 1/sqrt(D)
        scale and the mask), the softmax (with the sinks), and P.v; one kernel computes all three, so
        the call's time is shared out by their FLOPs. k and v come from the KV cache if the forward
        pass has one."""
        t1 = time.perf_counter()
        B, H, T, D = q.shape
        S = k.shape[-2]
        step = self._step()
        if step["start"] is None:
            step["start"] = S - T
        cached = step.get("cached", False)
        from minimoe.nn.attention import causal_mask
        kept = int(causal_mask(T, S, window).sum())      # (query, key) pairs the mask keeps
        n_scores = B * H * T * S
        dot = 2 * B * H * T * S * D
        Dv = v.shape[-1]                                 # = D, except in latent attention (nn/mla.py)
        parts = (("scores", dot, q.size + n_scores), ("softmax", 0, 5 * n_scores), ("pv", dot * Dv // D, 0))
        total = sum(f + ef for _, f, ef in parts)
        score_bytes = n_scores * q.itemsize
        for part, flops, eflops in parts:
            t_p = t0 + (t1 - t0) * (flops + eflops) / total
            if part == "softmax":
                self._add(f"{name}.softmax", "softmax", t0, B * T, sinks, t_p,
                          params=0 if sinks is None else sinks.size,
                          weight_bytes=0 if sinks is None else nbytes(sinks),
                          elementwise_flops=eflops, activation_bytes=2 * score_bytes)
            else:
                kv_arr = k if part == "scores" else v
                act = (q.nbytes + score_bytes) if part == "scores" else (score_bytes + out[0].nbytes)
                self._add(f"{name}.{part}", "attention", t0, B * T, t1=t_p, flops=flops,
                          flops_causal=2 * B * H * kv_arr.shape[-1] * kept, elementwise_flops=eflops,
                          kv_cache_bytes=kv_arr.nbytes if cached else 0,
                          activation_bytes=act + (0 if cached else kv_arr.nbytes))
            t0 = t_p

    def _activation(self, name, a, u, act, limit, alpha, out, t0):
        """The gated activation h (..., F) = glu(a, u): 6 FLOPs per element (swiglu), 8 (swiglu_oai)."""
        h = out[0]
        self._add(name, "activation", t0, h.size // h.shape[-1],
                  elementwise_flops=(6 if act == "swiglu" else 8) * h.size,
                  activation_bytes=a.nbytes + u.nbytes + h.nbytes)

    def _route(self, name, logits, K, rule, renorm, scale, *deepseek_choice, out, t0):
        """The router's choice: logits (N, E) -> weights (N, K), experts (N, K), probs (N, E); its
        statistics are kept per layer for the routing views."""
        t1 = time.perf_counter()
        weights, experts, probs, _ = out
        step = self._step()
        step["routing"][self.layer] = {
            "experts": experts.copy(), "weights": weights.copy(), "probs": probs.copy(),
            "tokens_per_expert": np.bincount(experts.ravel(), minlength=logits.shape[-1]),
            "prob_mass": probs.sum(axis=0)}
        self._add(name, "route", t0, logits.shape[0], t1=t1,
                  elementwise_flops=5 * logits.size + 2 * weights.size,
                  activation_bytes=logits.nbytes + probs.nbytes + experts.nbytes + weights.nbytes)

    def _expert_choice(self, name, logits, T, capacity, out, t0):
        """Expert choice: logits (N, E) -> weights (N, E) (0 where an expert did not take the
        token), chosen (N, E), probs (N, E), slots; the softmax and a top-capacity per expert."""
        t1 = time.perf_counter()
        weights, chosen, probs, _ = out
        E = logits.shape[-1]
        self._step()["routing"][self.layer] = {
            "experts": np.broadcast_to(np.arange(E), chosen.shape).copy(), "weights": weights.copy(),
            "probs": probs.copy(), "tokens_per_expert": chosen.sum(axis=0), "prob_mass": probs.sum(axis=0)}
        self._add(name, "route", t0, logits.shape[0], t1=t1,
                  elementwise_flops=5 * logits.size + int(chosen.sum()),
                  activation_bytes=logits.nbytes + probs.nbytes + weights.nbytes + chosen.nbytes)

    def _dispatch_capacity(self, name, experts, priority, E, T, cap, policy, out, t0):
        """Filling each expert's buffer (minimoe/nn/capacity.py): index work, no FLOPs."""
        self._add(name, "dispatch", t0, experts.shape[0],
                  activation_bytes=experts.nbytes + priority.nbytes + out[0].nbytes)

    def _gather_slots(self, name, x, slots, S, out, t0):
        """xs (E*G*Cap, C): x's rows in the experts' buffers, padding rows included."""
        self._add(name, "dispatch", t0, x.shape[0], activation_bytes=x.nbytes + out.nbytes)

    def _combine_slots(self, name, ys, slots, weights, out, t0):
        """y (N, C) from the buffers: 2 FLOPs per (token, slot, channel), as `_combine` counts."""
        self._add(name, "combine", t0, out.shape[0], elementwise_flops=2 * weights.size * ys.shape[1],
                  activation_bytes=ys.nbytes + weights.nbytes + out.nbytes)

    def _dispatch(self, name, experts, E, out, t0):
        """Sorting the assignments by expert: index work, no FLOPs."""
        self._add(name, "dispatch", t0, experts.shape[0], activation_bytes=experts.nbytes + out[0].nbytes)

    def _gather(self, name, x, order, K, out, t0):
        """xs (A, C) = x (N, C) gathered in expert order."""
        self._add(name, "dispatch", t0, x.shape[0], activation_bytes=x.nbytes + out.nbytes)

    def _combine(self, name, ys, order, weights, out, t0):
        """y (N, C) = the K weighted outputs of each token, summed: 2 FLOPs per (token, slot, channel)."""
        self._add(name, "combine", t0, out.shape[0], elementwise_flops=2 * ys.size,
                  activation_bytes=ys.nbytes + weights.nbytes + out.nbytes)

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
