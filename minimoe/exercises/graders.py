"""One grader per exercise, and each exercise's reference solution (minimoe's own code).

Shape legend: B batch, T time, S keys, C channels, H heads, D head dim, F ffn width, E experts,
K top-k, N tokens, A = N*K assignments.

A grader takes the student's function and returns a list of `Check`s (name, passed, detail). It
never trusts the student's function with anything it needs afterwards: every input is a fresh
copy, and every expected value comes from an independent oracle:

    backward passes     float64 finite differences of minimoe's forward (train/gradcheck.py)
    Q4_0 / MXFP4        minimoe.quant's bytes, which the tests hold equal to ggml's (gguf)
    routing, balance    minimoe.nn.router.select / minimoe.train.losses, and a hand-computed case
    KV-cache decode     attention over the whole sequence at once (nn/attention.attend)
    estimator by hand   minimoe.inspect.estimate, whose counts the tests hold to published figures

REFERENCES maps each exercise to a function with the student's signature built from the library,
so `grade(name, REFERENCES[name])` passes by construction (the tests check that it does, and that
every stub fails).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from minimoe.train.gradcheck import check_gradients

TOL = 1e-6          # relative error of a float64 finite-difference check


@dataclass
class Check:
    name: str
    passed: bool
    detail: str = ""


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _shape_check(name: str, got, want_shape) -> Check | None:
    """A failing Check if `got` is not an array of `want_shape`, else None."""
    if not isinstance(got, np.ndarray):
        return Check(name, False, f"expected a NumPy array of shape {want_shape}, found {type(got).__name__}")
    if got.shape != tuple(want_shape):
        return Check(name, False, f"expected shape {tuple(want_shape)}, found {got.shape}")
    return None


def _fd(name: str, loss: Callable[[], float], arrays: dict, grads: dict) -> list[Check]:
    """Finite-difference checks, one per array; a wrong shape fails by name first."""
    out = []
    for k, x in arrays.items():
        bad = _shape_check(f"{name}: d{k}", grads[k], x.shape)
        if bad:
            out.append(bad)
    if out:
        return out
    grads = {k: np.asarray(g, np.float64) for k, g in grads.items()}
    errors = check_gradients(loss, arrays, grads, n_dirs=2)
    return [Check(f"{name}: d{k}", err < TOL, f"relative error {err:.1e} (need < {TOL:.0e})")
            for k, err in errors.items()]


# --- backward passes ---------------------------------------------------------------------------

def grade_rmsnorm_backward(fn) -> list[Check]:
    from minimoe.nn.norm import rmsnorm
    rng, eps = _rng(1), 1e-5
    x, w = rng.standard_normal((2, 3, 8)), 1 + 0.1 * rng.standard_normal(8)   # (B, T, C), (C,)
    R = rng.standard_normal(x.shape)                     # loss = sum(y * R), so dy = R
    _, xhat, rstd = rmsnorm(x, w, eps)
    dx, dw = fn(R.copy(), xhat.copy(), rstd.copy(), w.copy())
    return _fd("rmsnorm", lambda: float(np.sum(rmsnorm(x, w, eps)[0] * R)), {"x": x, "weight": w},
               {"x": dx, "weight": dw})


def grade_rope_backward(fn) -> list[Check]:
    from minimoe.nn.rope import cos_sin, rotate
    rng = _rng(2)
    x = rng.standard_normal((2, 3, 5, 8))                # (B, H, T, D)
    cos, sin = cos_sin(np.arange(5), 8, 10000.0, dtype=np.float64)  # (T, D)
    R = rng.standard_normal(x.shape)
    dx = fn(R.copy(), cos.copy(), sin.copy())
    return _fd("rope", lambda: float(np.sum(rotate(x, cos, sin) * R)), {"x": x}, {"x": dx})


def grade_attention_backward(fn) -> list[Check]:
    from minimoe.nn.attention import attend
    rng = _rng(3)
    q, k, v = (rng.standard_normal((2, 2, 5, 4)) for _ in range(3))   # (B, H, T, D)
    R = rng.standard_normal(q.shape)

    def loss():
        return float(np.sum(attend(q, k, v, 0, None)[0] * R))
    y, probs, _ = attend(q, k, v, 0, None)
    probs = probs.reshape(2, 2, 5, 5)                    # (B, G, R=1, T, S) -> (B, H, T, S)
    dq, dk, dv = fn(R.copy(), q.copy(), k.copy(), v.copy(), probs.copy())
    return _fd("attention", loss, {"q": q, "k": k, "v": v}, {"q": dq, "k": dk, "v": dv})


def grade_swiglu_backward(fn) -> list[Check]:
    from minimoe.nn.ffn import glu_forward
    rng = _rng(4)
    a, u = 2 * rng.standard_normal((6, 10)), rng.standard_normal((6, 10))   # (N, F)
    R = rng.standard_normal(a.shape)
    da, du = fn(R.copy(), a.copy(), u.copy())
    return _fd("swiglu", lambda: float(np.sum(glu_forward(a, u)[0] * R)), {"a": a, "u": u},
               {"a": da, "u": du})


ROUTER_CASES = (("softmax_topk", True), ("softmax_topk", False), ("topk_softmax", True),
                ("sigmoid_topk", True))


def _separated_logits(rng, N: int, E: int) -> np.ndarray:
    """(N, E) logits whose sorted values are >= 0.1 apart, so a finite-difference step of 1e-3
    never changes which experts are chosen (the choice has no gradient)."""
    rows = [rng.permutation(E) * 0.3 + 0.05 * rng.random() for _ in range(N)]
    return np.array(rows) - 1.0                          # (N, E)


def grade_router_backward(fn) -> list[Check]:
    from minimoe.nn.router import select
    rng, N, E, K = _rng(5), 6, 5, 2
    out = []
    for rule, renorm in ROUTER_CASES:
        logits = _separated_logits(rng, N, E)
        R = rng.standard_normal((N, K))
        _, experts, _, _ = select(logits, K, rule, renorm, 1.0)
        dlogits = fn(R.copy(), logits.copy(), experts.copy(), rule, renorm)
        label = f"router {rule}" + ("" if rule != "softmax_topk" else " renorm" if renorm else " no renorm")
        out += _fd(label,
                   lambda: float(np.sum(select(logits, K, rule, renorm, 1.0)[0] * R)),
                   {"logits": logits}, {"logits": dlogits})
    return out


def grade_moe_combine_backward(fn) -> list[Check]:
    from minimoe.nn.moe import combine, dispatch
    rng, N, K, E, C = _rng(6), 7, 2, 4, 3
    experts = np.stack([rng.choice(E, K, replace=False) for _ in range(N)])   # (N, K)
    order, _ = dispatch(experts, E)                      # (A,) assignments sorted by expert
    ys, weights = rng.standard_normal((N * K, C)), rng.random((N, K))          # (A, C), (N, K)
    R = rng.standard_normal((N, C))
    dweights, dys = fn(R.copy(), ys.copy(), order.copy(), weights.copy())
    return _fd("moe combine", lambda: float(np.sum(combine(ys, order, weights) * R)),
               {"ys": ys, "weights": weights}, {"ys": dys, "weights": dweights})


# --- formats: byte for byte ---------------------------------------------------------------------

def _format_blocks(rng) -> dict[str, np.ndarray]:
    """Named (N, 32) float32 test blocks, the hard cases included."""
    cases = {"random normal blocks": rng.standard_normal((16, 32)).astype(np.float32),
             "wide range": (rng.standard_normal((8, 32)) * 10.0 ** rng.integers(-3, 4, (8, 1))).astype(np.float32),
             "an all-zero block": np.zeros((1, 32), np.float32)}
    tie = np.linspace(-1, 1, 32, dtype=np.float32)[None]   # |min| == |max|: which one is "largest"?
    cases["a block whose largest |x| is tied"] = tie
    cases["a block of one sign"] = np.abs(rng.standard_normal((2, 32))).astype(np.float32)
    return cases


def _grade_bytes(fn, reference, fmt: str, block_bytes: int) -> list[Check]:
    out = []
    for name, x in _format_blocks(_rng(7)).items():
        want = reference(x)
        got = fn(x.copy())
        bad = _shape_check(f"{fmt}: {name}", got, want.shape)
        if bad:
            out.append(bad)
            continue
        got = np.asarray(got)
        if got.dtype != np.uint8:
            out.append(Check(f"{fmt}: {name}", False, f"expected dtype uint8, found {got.dtype}"))
            continue
        diff = np.argwhere(got != want)
        if len(diff):
            n, j = diff[0]
            where = "the scale" if j < block_bytes - 16 else f"nibble byte {j - (block_bytes - 16)}"
            out.append(Check(f"{fmt}: {name}", False, f"{len(diff)} bytes differ; first in block {n}, "
                             f"byte {j} ({where}): expected 0x{want[n, j]:02x}, found 0x{got[n, j]:02x}"))
        else:
            out.append(Check(f"{fmt}: {name}", True, f"{want.size} bytes identical"))
    return out


def grade_q4_0_pack(fn) -> list[Check]:
    from minimoe.quant import q4_0
    return _grade_bytes(fn, q4_0.quantize_blocks, "q4_0", q4_0.BLOCK_BYTES)


def grade_mxfp4_pack(fn) -> list[Check]:
    from minimoe.quant import mxfp4
    return _grade_bytes(fn, mxfp4.quantize_blocks, "mxfp4", mxfp4.BLOCK_BYTES)


# --- routing and balance: against reference values ----------------------------------------------

def _close(name: str, got, want, tol: float = 1e-6) -> Check:
    got = np.asarray(got, dtype=np.float64) if not isinstance(got, (float, int)) else np.float64(got)
    if np.shape(got) != np.shape(want):
        return Check(name, False, f"expected shape {np.shape(want)}, found {np.shape(got)}")
    err = float(np.max(np.abs(got - want))) if np.size(want) else 0.0
    return Check(name, err <= tol, f"max |difference| {err:.1e} (need <= {tol:.0e})"
                 + ("" if err <= tol else f"; expected {np.round(want, 6).tolist()}"))


def grade_top_k_routing(fn) -> list[Check]:
    from minimoe.nn.router import select
    # hand-computed: softmax([ln 1, ln 2, ln 3, ln 4]) = [.1, .2, .3, .4]; top 2 = experts 3, 2;
    # renormalised: .4/.7, .3/.7
    hand = np.log(np.array([[1.0, 2.0, 3.0, 4.0]]))
    out = []
    for name, logits, K in (("hand case [ln1, ln2, ln3, ln4], K=2", hand, 2),
                            ("random logits, K=2", _rng(8).standard_normal((9, 6)), 2),
                            ("random logits, K=3", _rng(9).standard_normal((5, 8)), 3)):
        w_ref, e_ref, _, _ = select(logits, K, "softmax_topk", True, 1.0)
        w, e = fn(logits.copy(), K)
        e = np.asarray(e)
        if e.shape != e_ref.shape or not np.array_equal(e, e_ref):
            out.append(Check(f"{name}: experts", False, f"expected {e_ref.tolist()}, found {e.tolist()}"))
        else:
            out.append(Check(f"{name}: experts", True, "same experts in the same order"))
        out.append(_close(f"{name}: weights", w, w_ref))
    return out


def grade_load_balancing_loss(fn) -> list[Check]:
    from minimoe.train.losses import load_balancing_loss
    out = []
    # hand-computed: even routing gives exactly K
    E, K, N = 4, 2, 8
    probs = np.full((N, E), 1 / E)
    experts = np.array([[n % E, (n + 1) % E] for n in range(N)])
    out.append(_close("even routing gives K = 2", fn(probs, experts), 2.0, 1e-9))
    # collapsed: every token picks experts 0 and 1 with probability .5 each -> E * (1*.5 + 1*.5) = E
    probs = np.tile([0.5, 0.5, 0.0, 0.0], (N, 1))
    experts = np.tile([0, 1], (N, 1))
    out.append(_close("collapsed routing gives E = 4", fn(probs, experts), 4.0, 1e-9))
    rng = _rng(10)
    for n in range(2):
        logits = rng.standard_normal((12, 6))
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        experts = np.argsort(-probs, axis=1)[:, :2]
        want = load_balancing_loss([{"probs": probs, "experts": experts}])[0]
        out.append(_close(f"random routing {n + 1} vs minimoe.train.losses", fn(probs, experts), want, 1e-9))
    return out


# --- the KV cache ------------------------------------------------------------------------------

def grade_kv_cache_decode(fn) -> list[Check]:
    from minimoe.nn.attention import attend
    rng = _rng(11)
    B, H, T, D = 2, 3, 6, 4
    q, k, v = (rng.standard_normal((B, H, T, D)) for _ in range(3))   # (B, H, T, D)
    full = attend(q, k, v, 0, None)[0]                   # (B, H, T, D): every position at once
    k_cache, v_cache = np.zeros((B, H, 0, D)), np.zeros((B, H, 0, D))
    out = []
    for t in range(T):
        sl = slice(t, t + 1)
        y, k_cache, v_cache = fn(q[:, :, sl].copy(), k[:, :, sl].copy(), v[:, :, sl].copy(), k_cache, v_cache)
        bad = _shape_check(f"step {t}: cache", np.asarray(k_cache), (B, H, t + 1, D))
        if bad:
            return out + [bad]
        out.append(_close(f"step {t}: output vs the full forward's row {t}", y, full[:, :, sl], 1e-10))
    return out


# --- the estimator by hand ---------------------------------------------------------------------

ESTIMATE_KEYS = ("total_params", "active_params", "kv_cache_bytes", "bytes_per_token")
ESTIMATE_CASES = (("tiny-moe", 64), ("mixtral-mini", 1024))


def grade_estimate_by_hand(fn) -> list[Check]:
    import minimoe
    from minimoe.inspect.estimate import estimate
    out = []
    for preset, context in ESTIMATE_CASES:
        cfg = minimoe.Config.preset(preset)
        ref = estimate(cfg, dtype="bf16", context=context, kv_dtype="bf16")
        got = fn(cfg, context)
        if not isinstance(got, dict):
            return out + [Check(preset, False, f"expected a dict with keys {ESTIMATE_KEYS}, found {type(got).__name__}")]
        for key in ESTIMATE_KEYS:
            want, val = int(ref[key]), got.get(key)
            ok = val is not None and int(val) == want
            out.append(Check(f"{preset}, context {context}: {key}", ok,
                             f"{want:,}" if ok else f"expected {want:,}, found {val!r}"))
    return out


# --- reference solutions: the library's code, in the student's signatures ------------------------

def _ref_rmsnorm_backward(dy, xhat, rstd, weight):
    from minimoe.nn.norm import rmsnorm_backward
    return rmsnorm_backward(dy, xhat, rstd, weight)


def _ref_rope_backward(dy, cos, sin):
    from minimoe.nn.rope import rotate_back
    return rotate_back(dy, cos, sin)


def _ref_attention_backward(dy, q, k, v, probs):
    """The y = P v and scores = q k^T / sqrt(D) steps of nn/attention.backward, with H == G."""
    from minimoe.nn.attention import softmax_backward
    D, S = q.shape[-1], probs.shape[-1]
    dprobs = dy @ v.swapaxes(-1, -2)                     # (B,H,T,D) @ (B,H,D,S) -> (B,H,T,S)
    dv = probs.swapaxes(-1, -2) @ dy                     # (B,H,S,T) @ (B,H,T,D) -> (B,H,S,D)
    dscores = softmax_backward(dprobs.reshape(-1, S), probs.reshape(-1, S))[0].reshape(probs.shape)
    dq = dscores @ k / np.sqrt(D)                        # (B,H,T,S) @ (B,H,S,D) -> (B,H,T,D)
    dk = dscores.swapaxes(-1, -2) @ q / np.sqrt(D)       # (B,H,S,T) @ (B,H,T,D) -> (B,H,S,D)
    return dq, dk, dv


def _ref_swiglu_backward(dh, a, u):
    from minimoe.nn.ffn import glu_backward, glu_forward
    return glu_backward(dh, glu_forward(a, u)[1])


def _ref_router_backward(dweights, logits, experts, rule, renorm):
    """nn/router.backward on a router whose projection is the identity, so dx is dlogits."""
    from minimoe.nn import linear
    from minimoe.nn.router import backward, select
    K = experts.shape[1]
    weights, experts, probs, g = select(logits, K, rule, renorm, 1.0)
    _, lin = linear.forward(logits, np.eye(logits.shape[1]), None, name="exercise.router")  # logits = logits I^T
    return backward(dweights, (lin, logits, probs, experts, g, weights, rule, renorm, 1.0, None))[0]


def _ref_moe_combine_backward(dy, ys, order, weights):
    from minimoe.nn.moe import combine_backward
    return combine_backward(dy, ys, order, weights)


def _ref_q4_0_pack(x):
    from minimoe.quant import q4_0
    return q4_0.quantize_blocks(x)


def _ref_mxfp4_pack(x):
    from minimoe.quant import mxfp4
    return mxfp4.quantize_blocks(x)


def _ref_top_k_routing(logits, K):
    from minimoe.nn.router import select
    weights, experts, _, _ = select(logits, K, "softmax_topk", True, 1.0)
    return weights, experts


def _ref_load_balancing_loss(probs, experts):
    from minimoe.train.losses import load_balancing_loss
    return load_balancing_loss([{"probs": probs, "experts": experts}])[0]


def _ref_kv_cache_decode(q, k, v, k_cache, v_cache):
    from minimoe.nn.attention import attend
    k_cache = np.concatenate([k_cache, k], axis=2)      # (B, H, S, D) + (B, H, 1, D) -> (B, H, S+1, D)
    v_cache = np.concatenate([v_cache, v], axis=2)
    return attend(q, k_cache, v_cache, 0, None)[0], k_cache, v_cache


def _ref_estimate_by_hand(cfg, context):
    from minimoe.inspect.estimate import estimate
    r = estimate(cfg, dtype="bf16", context=context, kv_dtype="bf16")
    return {k: r[k] for k in ESTIMATE_KEYS}


GRADERS: dict[str, Callable] = {
    "rmsnorm_backward": grade_rmsnorm_backward,
    "rope_backward": grade_rope_backward,
    "attention_backward": grade_attention_backward,
    "swiglu_backward": grade_swiglu_backward,
    "router_backward": grade_router_backward,
    "moe_combine_backward": grade_moe_combine_backward,
    "q4_0_pack": grade_q4_0_pack,
    "mxfp4_pack": grade_mxfp4_pack,
    "top_k_routing": grade_top_k_routing,
    "load_balancing_loss": grade_load_balancing_loss,
    "kv_cache_decode": grade_kv_cache_decode,
    "estimate_by_hand": grade_estimate_by_hand,
}
REFERENCES: dict[str, Callable] = {name: globals()[f"_ref_{name}"] for name in GRADERS}
