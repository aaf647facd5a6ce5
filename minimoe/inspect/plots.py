"""Pictures of a trace. Each function returns a matplotlib Figure (built without pyplot, so it
works headless and leaves no global state); `save(fig, path)` writes it.

Shape legend: L layers, E experts, K top-k, N tokens traced.

    expert_load_heatmap(t)              layer x expert: tokens routed to each expert
    routing_map(t, tokenizer)           tokens as columns, layers as rows, colour = chosen expert
    flops_bytes_bars({"fp32": t1, "q4_0": t2})   per-token FLOPs and bytes, stacked by component
    roofline(t, machine)                every op at its FLOPs/byte against bandwidth and peak
    router_prob_hist(t)                 how confident the router is

`minimoe inspect --plot DIR` draws all of them.
"""
from __future__ import annotations

import os

import numpy as np

from minimoe.inspect import views
from minimoe.inspect.tracing import Trace

# One colour per component, the same in every figure.
COMPONENT_COLORS = {"embedding": "#8c8c8c", "attention": "#1f77b4", "router": "#d62728",
                    "experts": "#ff7f0e", "shared_experts": "#e6a157", "ffn": "#2ca02c",
                    "norms": "#9467bd", "head": "#17becf", "other": "#bcbd22"}


def _figure(w: float, h: float):
    from matplotlib.figure import Figure
    return Figure(figsize=(w, h), layout="constrained")


def save(fig, path: str, dpi: int = 120) -> str:
    """Write `fig` to `path` atomically (the folder is created), in the format its extension
    names (.png when it has none); returns the path."""
    from minimoe.errors import MinimoeError
    from minimoe.io.atomic import atomic_path
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    formats = fig.canvas.get_supported_filetypes()
    if ext not in formats:
        raise MinimoeError(f"{path}: cannot draw a figure as .{ext}; use one of "
                           f"{', '.join('.' + f for f in sorted(formats))}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=ext)
    return path


def _require_routing(trace: Trace) -> dict:
    routing = trace.routing()
    if not routing:
        from minimoe.errors import MinimoeError
        raise MinimoeError("this trace has no routing: trace a Mixture-of-Experts model "
                           "(n_experts > 0) to draw expert load and routing")
    return routing


def expert_load_heatmap(trace: Trace, title: str | None = None):
    """Tokens routed to each expert, layer by layer, with each layer's imbalance (max/mean)."""
    load = views.expert_load(_require_routing(trace) and trace)
    counts = np.array([r["tokens_per_expert"] for r in load])          # (L, E)
    L, E = counts.shape
    fig = _figure(1.2 + 0.55 * E, 1.2 + 0.45 * L)
    ax = fig.add_subplot()
    im = ax.imshow(counts, cmap="viridis", aspect="auto")
    for i in range(L):
        for e in range(E):
            c = counts[i, e]
            ax.text(e, i, str(c), ha="center", va="center", fontsize=8,
                    color="white" if c < counts.max() * 0.6 else "black")
    ax.set_xticks(range(E))
    ax.set_yticks(range(L), [f"layer {r['layer']}  (max/mean {r['max_over_mean']:.2f})" for r in load])
    ax.set_xlabel("expert")
    K = trace.routing()[load[0]["layer"]]["experts"].shape[1]
    ax.set_title(title or f"expert load: {trace.n_tokens} tokens x top-{K}", fontsize=10)
    fig.colorbar(im, ax=ax, label="tokens")
    return fig


def routing_map(trace: Trace, tokenizer=None, max_tokens: int = 64, title: str | None = None):
    """The routing of a prompt: one column per token (its text below), one row per (layer, slot);
    the colour and the number are the expert chosen in that slot (slot 1 = highest weight)."""
    routing = _require_routing(trace)
    layers = list(routing)
    experts0 = routing[layers[0]]["experts"]                           # (N, K)
    N, K = experts0.shape
    E = routing[layers[0]]["tokens_per_expert"].shape[0]
    n = min(N, max_tokens)
    grid = np.concatenate([routing[i]["experts"][:n].T for i in layers], axis=0)   # (L*K, n)
    weights = np.concatenate([routing[i]["weights"][:n].T for i in layers], axis=0)
    from matplotlib.colors import ListedColormap
    import matplotlib
    base = matplotlib.colormaps["tab20" if E > 10 else "tab10"]
    cmap = ListedColormap([base(e % base.N) for e in range(E)])
    fig = _figure(1.5 + 0.32 * n, 1.0 + 0.32 * len(layers) * K)
    ax = fig.add_subplot()
    im = ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=E - 0.5, aspect="auto")
    for r in range(grid.shape[0]):
        for c in range(n):
            ax.text(c, r, str(grid[r, c]), ha="center", va="center", fontsize=7,
                    alpha=0.4 + 0.6 * float(min(weights[r, c], 1.0)))
    tokens = [e["token"] for e in trace.token_routing()[:n]]
    labels = [_token_text(tokenizer, t) for t in tokens]
    ax.set_xticks(range(n), labels, fontsize=8, fontfamily="monospace")
    ax.set_yticks(range(len(layers) * K),
                  [f"L{i} #{k + 1}" if K > 1 else f"layer {i}" for i in layers for k in range(K)],
                  fontsize=8)
    for j in range(1, len(layers)):
        ax.axhline(j * K - 0.5, color="white", lw=2)
    ax.set_title(title or "routing: the expert each token chose, per layer (#1 = highest weight)")
    fig.colorbar(im, ax=ax, ticks=range(E), label="expert")
    return fig


def _token_text(tokenizer, token: int) -> str:
    """A short, visible label for one token: its text, with space/newline made visible."""
    if tokenizer is None:
        return str(token)
    try:
        s = tokenizer.decode([token])
    except Exception:
        return str(token)
    return {" ": "␣", "\n": "↵", "\t": "⇥", "": "∅"}.get(s, s.replace("$", r"\$"))[:4]


def flops_bytes_bars(traces: dict, title: str | None = None):
    """Per-token FLOPs and weight bytes, stacked by component, one bar per trace (e.g. fp32 and
    each quantized recipe, each tracing the same token). FLOPs include attention; bytes are the
    weights read at their stored precision (the activations and KV cache are the same for all)."""
    labels = list(traces)
    comps = [c for c in COMPONENT_COLORS
             if any(c in t.group("component") for t in traces.values())]
    fig = _figure(2.5 + 1.6 * len(labels), 4.2)
    axes = fig.subplots(1, 2)
    for ax, key, unit, scale in ((axes[0], "flops", "MFLOPs", 1e6), (axes[1], "weight_bytes", "MB", 1e6)):
        bottom = np.zeros(len(labels))
        for c in comps:
            vals = np.array([t.group("component").get(c, {}).get(key, 0) / max(t.n_tokens, 1)
                             for t in traces.values()]) / scale
            if not vals.any():
                continue
            ax.bar(labels, vals, bottom=bottom, label=c, color=COMPONENT_COLORS[c])
            bottom += vals
        for x, v in enumerate(bottom):
            ax.text(x, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_ylabel(f"{unit} per token")
        ax.set_title({"flops": "FLOPs per token", "weight_bytes": "weight bytes per token"}[key])
        ax.tick_params(axis="x", rotation=30)
    handles, names = axes[1].get_legend_handles_labels()
    fig.legend(handles[::-1], names[::-1], fontsize=8, loc="outside right center")
    if title:
        fig.suptitle(title)
    return fig


def roofline(trace: Trace, machine: dict | None = None, title: str | None = None, label_top: int = 8):
    """Each op at (FLOPs per byte, achieved GFLOP/s), under the roofline min(peak, I * bandwidth).
    Ops left of the ridge point are limited by memory, right of it by compute. Each point is one
    op summed over layers and experts ("attn.q", "moe.experts.*.gate", ...)."""
    if machine is None:
        from minimoe.inspect.machine import machine as measured
        machine = measured()
    rows = views.arithmetic_intensity(trace, machine, fold=True)
    bw, peak = machine["bandwidth_gbs"], machine["peak_gflops"]
    fig = _figure(7, 4.6)
    ax = fig.add_subplot()
    lo = min([r["intensity"] for r in rows] + [0.05]) / 2
    hi = max([r["intensity"] for r in rows] + [peak / bw]) * 4
    x = np.geomspace(lo, hi, 200)
    ax.plot(x, np.minimum(peak, x * bw), color="black", lw=1.5,
            label=f"roofline: {bw:.1f} GB/s, {peak:.0f} GFLOP/s")
    ax.axvline(peak / bw, color="grey", ls=":", lw=1)
    for comp in COMPONENT_COLORS:
        pts = [r for r in rows if r["component"] == comp]
        if pts:
            ax.scatter([r["intensity"] for r in pts], [max(r["achieved_gflops"], 1e-4) for r in pts],
                       s=18, color=COMPONENT_COLORS[comp], label=comp, alpha=0.8)
    # the slowest ops get a number beside their point and a line in a key: names never overlap
    labelled = sorted(rows, key=lambda r: -r["time_s"])[:label_top]
    for k, r in enumerate(labelled, 1):
        ax.annotate(str(k), (r["intensity"], max(r["achieved_gflops"], 1e-4)), fontsize=7,
                    xytext=(3, 2), textcoords="offset points", fontweight="bold")
    if labelled:
        key = "\n".join(f"{k}  {r['name']}" for k, r in enumerate(labelled, 1))
        ax.text(0.99, 0.02, "slowest ops\n" + key, transform=ax.transAxes, fontsize=6.5, ha="right",
                va="bottom", multialignment="left", family="monospace", bbox=dict(facecolor="white", edgecolor="#cccccc", alpha=0.9))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOPs per byte of weights + activations + KV)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title(title or f"roofline ({machine['source'].split(',')[0]})", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return fig


def router_prob_hist(trace: Trace, title: str | None = None, bins: int = 40):
    """Histogram of the router's probabilities: every (token, expert) probability, and the top-1
    probability of each token. Uniform routing piles up at 1/E; confident routing near 1."""
    routing = _require_routing(trace)
    probs = np.concatenate([r["probs"] for r in routing.values()], axis=0)   # (L*N, E)
    E = probs.shape[1]
    fig = _figure(7, 3.8)
    ax = fig.add_subplot()
    edges = np.linspace(0, 1, bins + 1)
    ax.hist(probs.ravel(), bins=edges, alpha=0.6, label=f"all router probabilities ({probs.size})")
    ax.hist(probs.max(axis=1), bins=edges, alpha=0.6, label=f"top-1 probability per token ({len(probs)})")
    ax.axvline(1 / E, color="black", ls="--", lw=1, label=f"uniform 1/E = {1 / E:.3g}")
    ax.set_xlabel("router probability")
    ax.set_ylabel("count")
    ax.set_title(title or f"how confident is the router? ({len(routing)} layers, E = {E})")
    ax.legend(fontsize=8)
    return fig


def all_figures(trace: Trace, tokenizer=None, recipe_traces: dict | None = None,
                machine: dict | None = None) -> dict:
    """{file stem: Figure} for every plot that applies (routing plots need an MoE)."""
    figs = {}
    if trace.routing():
        figs["expert_load"] = expert_load_heatmap(trace)
        figs["routing"] = routing_map(trace, tokenizer)
        figs["router_probs"] = router_prob_hist(trace)
    figs["roofline"] = roofline(trace, machine)
    if recipe_traces:
        figs["flops_bytes"] = flops_bytes_bars(recipe_traces)
    return figs
