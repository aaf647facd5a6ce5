"""`minimoe bench moe-scaling`: decode time per token as the expert count grows, active parameters fixed.

Shape legend: E experts, K = 2 experts per token, C d_model, F expert width.

Every config keeps C, F, K and the layer count, and changes only E: total parameters grow
about linearly with E, while the parameters one token touches (attention, router, K experts)
stay the same. Two models:

  small (in cache)   C 256, 2 layers, F 128: even at E = 64 all its weights fit in the CPU's
                     caches, so the time per token shows the code's own cost. Any growth with E
                     is overhead in the implementation (a loop over all experts, a sort of E items).
  mixtral-mini       C 512, 8 layers, F 1408: at large E the weights no longer fit in cache, and
                     the K experts a token picks must come from main memory: the time follows the
                     memory hierarchy, still not the total parameter count.

The plot shows time per token against total parameters and against active parameters.
"""
from __future__ import annotations

import time

import numpy as np

from minimoe.bench.timing import load_warning, machine_info

EXPERTS = (4, 8, 16, 32, 64)
SMALL = dict(vocab_size=256, d_model=256, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=64, d_ff=512,
             top_k=2, d_expert=128, max_seq_len=512, tie_embeddings=False)


def configs(model: str, experts=EXPERTS):
    """(E, Config) for each expert count, for model "small" or a preset name (e.g. mixtral-mini)."""
    import minimoe
    for E in experts:
        if model == "small":
            yield E, minimoe.Config(name=f"small-E{E}", n_experts=E, **SMALL)
        else:
            yield E, minimoe.Config.preset(model, n_experts=E)


def time_per_token(model, prompt_tokens: int, new_tokens: int, seed: int = 0) -> float:
    """Median seconds per decoded token, after a prompt of `prompt_tokens`."""
    prompt = np.random.default_rng(seed).integers(0, model.config.vocab_size, prompt_tokens)
    kv = model.new_kv_cache(1, prompt_tokens + new_tokens + 1)
    logits, _ = model.forward(prompt[None], kv)
    nxt = logits[:, -1].argmax(axis=-1)
    steps = []
    for _ in range(new_tokens):
        t0 = time.perf_counter()
        logits, _ = model.forward(nxt[:, None], kv)
        nxt = logits[:, -1].argmax(axis=-1)
        steps.append(time.perf_counter() - t0)
    return float(np.median(steps))


def run(models=("small", "mixtral-mini"), experts=EXPERTS, recipe: str = "fp32", prompt_tokens: int = 32,
        new_tokens: int = 64, seed: int = 0, progress=None) -> dict:
    import minimoe
    step = progress or (lambda msg: None)
    out = {"recipe": recipe, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
           "machine": machine_info(), "models": {}}
    for name in models:
        rows = []
        for E, cfg in configs(name, experts):
            step(f"{name}: E={E}")
            model = minimoe.Model(cfg, seed=seed)
            if recipe != "fp32":
                model = minimoe.quantize(model, recipe)
            model.generate(np.zeros(2, np.int64), 2)            # warm-up: repack, load kernels
            counts = model.param_counts()
            t = time_per_token(model, prompt_tokens, new_tokens, seed)
            weight_bytes = sum(int(a.nbytes) for a in model.params.values())
            rows.append({"experts": E, "total_params": counts["total"], "active_params": counts["active"],
                         "weight_bytes": weight_bytes, "ms_per_token": 1e3 * t})
            del model
        by_e = {r["experts"]: r["ms_per_token"] for r in rows}
        growth = by_e[64] / by_e[8] if 8 in by_e and 64 in by_e else None
        out["models"][name] = {"rows": rows, "growth_8_to_64": growth}
    small = out["models"].get("small", {}).get("growth_8_to_64")
    out["targets"] = {} if small is None else {
        "small model: time per token grows <= 1.2x from 8 to 64 experts":
            {"value": small, "target": 1.2, "met": bool(small <= 1.2)}}
    return out


def plot(r: dict, path: str) -> str:
    """Time per token against total and against active parameters, one line per model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for name, m in r["models"].items():
        rows = m["rows"]
        tot = [x["total_params"] / 1e6 for x in rows]
        act = [x["active_params"] / 1e6 for x in rows]
        ms = [x["ms_per_token"] for x in rows]
        line, = axes[0].plot(tot, ms, "o-", label=name)
        axes[1].plot(act, ms, "o", color=line.get_color(), label=name)
        for x, a, y, row in zip(tot, act, ms, rows):
            axes[0].annotate(f"E={row['experts']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
            axes[1].annotate(f"E={row['experts']}", (a, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axes[0].set_xscale("log")
    axes[1].set_xscale("log")
    axes[0].set_xlabel("total parameters (millions)")
    axes[1].set_xlabel("active parameters per token (millions)")
    axes[0].set_ylabel(f"decode time per token (ms, {r['recipe']})")
    axes[0].set_title("time does not follow total parameters")
    axes[1].set_title("it follows active parameters (and the cache)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend()
    fig.tight_layout()
    from minimoe.inspect.plots import save
    try:
        return save(fig, path)
    finally:
        plt.close(fig)


def format_report(r: dict) -> str:
    lines = [f"minimoe bench moe-scaling: top-2, active parameters fixed, {r['recipe']} weights, "
             f"median of {r['new_tokens']} decode steps after a {r['prompt_tokens']}-token prompt"]
    if load_warning(r["machine"]):
        lines.append("  " + load_warning(r["machine"]))
    for name, m in r["models"].items():
        lines += ["", f"{name}:", f"{'E':>5}{'total params':>15}{'active':>13}{'weight MiB':>12}{'ms/token':>10}"]
        for x in m["rows"]:
            lines.append(f"{x['experts']:>5}{x['total_params']:>15,}{x['active_params']:>13,}"
                         f"{x['weight_bytes'] / 2**20:>12.1f}{x['ms_per_token']:>10.2f}")
        if m["growth_8_to_64"] is not None:
            lines.append(f"  8 -> 64 experts: x{m['growth_8_to_64']:.2f} time per token")
    for name, t in r["targets"].items():
        lines += ["", f"{'met' if t['met'] else 'NOT met'}: {name} (x{t['value']:.2f})"]
    if r.get("plot"):
        lines += ["", f"plot: {r['plot']}"]
    return "\n".join(lines)
