"""`minimoe bench decode`: prefill and decode tokens/s of a preset, per quantization recipe and backend.

Shape legend: P prompt tokens, N new tokens.

For each recipe (fp32, q8_0, q4_1, q4_0, mxfp4, and the mixed recipes) the model is built with
random weights from the preset, quantized with `minimoe.quantize`, warmed up with the same
prompt and two steps (the first calls repack the weights and load the compiled kernels of every
path the timed run takes), then:
    prefill   one forward pass over the P-token prompt, filling a KV cache, logits of the last
              position only (as generate computes them): P / seconds
    decode    N greedy steps of one token each, through the KV cache: N / seconds
exactly what `model.generate(prompt, N)` does, timed in two parts.

Beside each decode speed stands its roofline ceiling. One more decode step is traced
(minimoe.trace) to count the bytes a token reads: every active weight at its stored precision,
and the KV cache. Decoding cannot go faster than the machine's read bandwidth divided by those
bytes, and the bandwidth to use is the one for the model's whole size (over many tokens every
expert is used, so the working set is every weight): `read_gbs_for` in minimoe/bench/machine.py
looks it up on the cache curve, which this run measures first (on a shared machine the bandwidth
moves from hour to hour). When the model is larger than the caches, that is DRAM.

The NumPy backend runs the twins: on packed weights they decode every weight to float32 on every
call, which is slow by design (they are for reading), so it decodes fewer tokens (`numpy_new_tokens`).
"""
from __future__ import annotations

import time

import numpy as np

from minimoe.bench.timing import load_warning, machine_info
from minimoe.kernels import backend

RECIPES = ("fp32", "q8_0", "q4_1", "q4_0", "mxfp4", "mxfp4-moe", "q4_0-moe")
# Peers, measured on this machine class with the same architecture (issue 7): tokens/s.
PEERS = {"hf_eager_fp32": {"decode": 67, "prefill": 1952},
         "llama.cpp_f32": {"decode": 147}, "llama.cpp_q8_0": {"decode": 470},
         "llama.cpp_q4_0": {"decode": 684, "prefill": 1696}}


def time_generate(model, prompt: np.ndarray, new_tokens: int) -> dict:
    """Greedy generation, prefill and decode timed apart. prompt (P,) -> tokens/s of each, and the
    bytes one more (traced) decode step reads."""
    import minimoe
    P = len(prompt)
    kv = model.new_kv_cache(1, P + new_tokens + 1)
    t0 = time.perf_counter()
    logits, _ = model.forward(prompt[None], kv, last_only=True)   # (1, 1, V), as generate does
    t1 = time.perf_counter()
    nxt = logits[:, -1].argmax(axis=-1)                           # (1,)
    steps = []
    for _ in range(new_tokens):
        s = time.perf_counter()
        logits, _ = model.forward(nxt[:, None], kv)               # (1, 1, V)
        nxt = logits[:, -1].argmax(axis=-1)
        steps.append(time.perf_counter() - s)
    with minimoe.trace() as tr:                                   # one more step, counted
        model.forward(nxt[:, None], kv)
    totals = tr.totals()
    return {"prefill_tok_s": P / (t1 - t0), "decode_tok_s": new_tokens / sum(steps) if steps else None,
            "decode_ms_median": 1e3 * float(np.median(steps)) if steps else None,
            "prompt_tokens": P, "new_tokens": new_tokens,
            "bytes_per_token": int(totals["weight_bytes"] + totals["kv_cache_bytes"])}


def model_bytes(model) -> int:
    """Bytes of every weight a decode step may read (all but the embedding table, whose one row
    per token is looked up): the working set of decoding many tokens."""
    from minimoe.inspect.tracing import nbytes
    tied = model.head is model.params["embed.weight"]
    return sum(nbytes(w) for name, w in model.params.items() if name != "embed.weight" or tied)


def add_ceiling(t: dict, size: int, peaks: dict) -> dict:
    """t (one result of time_generate) with the roofline ceiling: read GB/s at the model's size
    divided by the bytes a token reads, and the share of it reached."""
    from minimoe.bench.machine import read_gbs_for
    gbs = read_gbs_for(peaks, size)
    ceiling = gbs * 1e9 / t["bytes_per_token"]
    return {**t, "model_bytes": size, "read_gbs_at_size": gbs, "ceiling_tok_s": ceiling,
            "of_ceiling": t["decode_tok_s"] / ceiling if t["decode_tok_s"] else None}


def build(preset: str, recipe: str, seed: int = 0, base=None):
    """The preset's model with random weights, quantized by `recipe` ("fp32": left float)."""
    import minimoe
    if base is None:
        base = minimoe.Model(minimoe.Config.preset(preset), seed=seed)
    return base if recipe == "fp32" else minimoe.quantize(base, recipe)


def run(preset: str = "mixtral-mini", recipes=RECIPES, backends=("numba", "numpy"), prompt_tokens: int = 256,
        new_tokens: int = 128, numpy_new_tokens: int = 8, seed: int = 0, progress=None,
        quick_peaks: bool = False) -> dict:
    """quick_peaks: measure the cache curve at two sizes only (for tests)."""
    import minimoe
    from minimoe.bench.machine import CURVE_MIB, QUICK_CURVE_MIB, read_curve
    step = progress or (lambda msg: None)
    step("the cache curve (read GB/s by working-set size), measured now: the machine's bandwidth moves")
    curve = read_curve(QUICK_CURVE_MIB if quick_peaks else CURVE_MIB, 3 if quick_peaks else 5)
    peaks = {"read_gbs_by_mib": curve, "read_gbs": curve[max(curve, key=float)]}
    step(f"{preset}: random weights")
    base = minimoe.Model(minimoe.Config.preset(preset), seed=seed)
    prompt = np.random.default_rng(seed).integers(0, base.config.vocab_size, prompt_tokens)
    out = {"preset": preset, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "read_gbs_by_mib": curve,
           "numpy_new_tokens": numpy_new_tokens, "machine": machine_info(), "peers": PEERS, "results": {}}
    for recipe in recipes:
        step(f"{recipe}: quantize")
        model = build(preset, recipe, seed, base)
        for be in backends:
            step(f"{recipe} on {be}")
            with backend(be):
                model.generate(prompt, 2)                           # warm-up: repack, load every kernel
                                                                    # the timed prompt and steps use
                n = new_tokens if be == "numba" else numpy_new_tokens
                t = add_ceiling(time_generate(model, prompt, n), model_bytes(model), peaks)
                out["results"].setdefault(recipe, {})[be] = t
        del model
    q4 = out["results"].get("q4_0", {}).get("numba")
    fp = out["results"].get("fp32", {}).get("numba")
    out["targets"] = {}                                            # issue 7's, set for mixtral-mini
    if preset != "mixtral-mini":
        return out
    if q4:
        out["targets"]["q4_0 decode >= 2x HF eager fp32 (134 tok/s)"] = _target(q4["decode_tok_s"], 134)
        out["targets"]["q4_0 decode >= half llama.cpp q4_0 (342 tok/s)"] = _target(q4["decode_tok_s"], 342)
    if fp:
        out["targets"]["fp32 decode > HF eager fp32 (67 tok/s)"] = _target(fp["decode_tok_s"], 67)
    return out


def _target(value, goal) -> dict:
    return {"value": value, "target": goal, "met": bool(value is not None and value >= goal)}


def format_report(r: dict) -> str:
    m = r["machine"]
    lines = [f"minimoe bench decode --preset {r['preset']}: {r['prompt_tokens']}-token prompt, "
             f"{r['new_tokens']} new tokens greedy ({r['numpy_new_tokens']} on the numpy backend)",
             f"  {m['cpu']}, {m['cores']} cores; {m['blas']} ({m['blas_core']}); numba {m['numba_threads']} threads", ""]
    if load_warning(m):
        lines.insert(2, "  " + load_warning(m))
    lines += [f"{'recipe':<11}{'backend':<8}{'prefill tok/s':>14}{'decode tok/s':>14}{'ms/token':>10}"
              f"{'MB/token':>10}{'model MB':>10}{'read GB/s':>10}{'ceiling':>9}{'reached':>8}"]
    for recipe, per in r["results"].items():
        for be, t in per.items():
            lines.append(f"{recipe:<11}{be:<8}{t['prefill_tok_s']:>14.0f}{t['decode_tok_s']:>14.1f}"
                         f"{t['decode_ms_median']:>10.2f}{t['bytes_per_token'] / 1e6:>10.2f}"
                         f"{t['model_bytes'] / 1e6:>10.0f}{t['read_gbs_at_size']:>10.1f}"
                         f"{t['ceiling_tok_s']:>9.0f}{t['of_ceiling']:>8.0%}")
    lines += ["", "ceiling: the machine's read bandwidth at the model's size (the cache curve, measured at the "
              "start of this run) over the bytes one token reads. The curve is minimoe's own parallel read; "
              "BLAS streams a little faster, so float32 can pass 100%."]
    lines += ["", "peers, as recorded in issue 7 on this machine class at another time (same architecture, "
              "random weights; tests/benchmarks/compare_decode_peers.py measures them in the same run): " + "; ".join(
        f"{k} " + ", ".join(f"{kk} {vv}" for kk, vv in v.items()) for k, v in r["peers"].items())]
    if r["targets"]:
        lines += ["", "targets (against those recorded figures):"]
        for name, t in r["targets"].items():
            lines.append(f"  {'met    ' if t['met'] else 'NOT met'}  {name}: {t['value']:.1f} tok/s")
    return "\n".join(lines)
