"""Routing analysis: do the experts specialise, which experts work together, how sure is the
router, and how did the load move during training.

Shape legend: L MoE layers, N tokens analysed, E experts, K top-k, Q token classes, R evaluations.

    r = collect(model, "tinyshakespeare.txt", max_tokens=20_000)   # one eval-mode pass over val
    specialization(r)        (L, Q, E) share of each character class's assignments per expert
    coactivation(r)          (L, E, E) share of tokens that ran both experts i and j (diagonal: i)
    routing_entropy(r)       (L,) mean entropy of the router's distribution per token, in nats
    top_tokens(r, layer)     per expert, the tokens it gets most often relative to their frequency
    load_history(metrics)    iterations (R,), loads (R, L, E) from a run's metrics.json

`minimoe inspect --routing --data FILE --plot DIR` prints the tables and draws the figures below.
An assignment is a (token, expert) pair that ran: the token's top-k, minus what a capacity limit
dropped; with expert choice, the experts that took the token.
"""
from __future__ import annotations

import numpy as np

from minimoe.errors import MinimoeError

CLASSES = ("lower", "upper", "digit", "space", "newline", "punct", "other")


def char_class(text: str) -> int:
    """The class of a token by its first character: an index into CLASSES."""
    if not text:
        return CLASSES.index("other")
    c = text[0]
    if c == "\n":
        return CLASSES.index("newline")
    if c.isspace():
        return CLASSES.index("space")
    if c.isdigit():
        return CLASSES.index("digit")
    if c.isalpha():
        return CLASSES.index("lower" if c.islower() else "upper")
    if c.isprintable():
        return CLASSES.index("punct")
    return CLASSES.index("other")


def collect(model, data, max_tokens: int | None = 20_000, block_size: int | None = None,
            batch_size: int = 8) -> dict:
    """Route the val split of `data` (a file, "shakespeare", "pydoc", or token ids (N,)) through
    the model in eval mode, window by window. Returns {"tokens" (N,), "layers" [MoE layer ids],
    "assigned" (L, N, E) bool, "probs" (L, N, E), "n_experts", "top_k"}."""
    from minimoe.evaluate import eval_tokens
    cfg = model.config
    layers = [i for i in range(cfg.n_layers) if cfg.is_moe_layer(i)]
    if not layers:
        raise MinimoeError("routing analysis needs an MoE model (n_experts > 0); this one is dense")
    tokens = eval_tokens(model, data, "val") if isinstance(data, str) else np.asarray(data, np.int64)
    T = int(block_size or cfg.max_seq_len)
    n = len(tokens) // T * T if max_tokens is None else min(len(tokens), int(max_tokens)) // T * T
    if n == 0:
        raise MinimoeError(f"routing analysis: need at least one window of {T} tokens, found {len(tokens)}")
    windows = tokens[:n].reshape(-1, T)                                 # (n/T, T)
    assigned, probs = [[] for _ in layers], [[] for _ in layers]
    for b in range(0, len(windows), batch_size):
        _, cache = model.forward(windows[b: b + batch_size], inference=True)
        for j, i in enumerate(layers):
            st = cache["routing"][i]
            a = np.zeros(st["probs"].shape, dtype=bool)                 # (N_b, E)
            rows = np.arange(a.shape[0])[:, None]
            kept = st.get("kept", np.ones(st["experts"].shape, dtype=bool))
            a[rows, st["experts"]] = kept                               # the pairs that ran
            assigned[j].append(a)
            probs[j].append(st["probs"])
    return {"tokens": windows.reshape(-1), "layers": layers, "n_experts": cfg.n_experts,
            "top_k": cfg.top_k, "assigned": np.stack([np.concatenate(a) for a in assigned]),
            "probs": np.stack([np.concatenate(p) for p in probs])}


def token_classes(r: dict, tokenizer) -> np.ndarray:
    """(N,) the CLASSES index of each analysed token (by its decoded text)."""
    vocab = np.unique(r["tokens"])
    cls = {int(t): char_class(tokenizer.decode([int(t)])) for t in vocab}
    return np.array([cls[int(t)] for t in r["tokens"]])


def specialization(r: dict, classes: np.ndarray) -> np.ndarray:
    """(L, Q, E): of the assignments made by tokens of class q, the share that went to expert e
    (rows sum to 1; a class with no tokens is all zeros). An even router gives 1/E everywhere."""
    A = r["assigned"].astype(np.float64)                                # (L, N, E)
    onehot = np.eye(len(CLASSES))[classes]                              # (N, Q)
    counts = np.einsum("nq,lne->lqe", onehot, A)                        # (L, Q, E)
    total = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def coactivation(r: dict) -> np.ndarray:
    """(L, E, E): the share of tokens that ran both expert i and expert j; the diagonal is the
    share that ran i. With top-2, independent even routing would give 2/E * 1/(E-1) off the diagonal."""
    A = r["assigned"].astype(np.float64)                                # (L, N, E)
    return np.einsum("lni,lnj->lij", A, A) / A.shape[1]                 # (L, E, E)


def routing_entropy(r: dict) -> np.ndarray:
    """(L,) the mean over tokens of -sum_e p_e log p_e of the router's distribution (nats);
    log E is a uniform router, 0 a certain one."""
    p = r["probs"].astype(np.float64)                                   # (L, N, E)
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=-1).mean(axis=-1)


def load(r: dict) -> np.ndarray:
    """(L, E): each expert's share of the assignments that ran."""
    A = r["assigned"].sum(axis=1).astype(np.float64)                    # (L, E)
    return A / A.sum(axis=-1, keepdims=True)


def top_tokens(r: dict, layer_index: int, n: int = 6, min_count: int = 20) -> list[list[tuple]]:
    """Per expert: up to n (token id, lift) with the highest lift = (share of this token's
    assignments that went to the expert) / (the expert's overall share), among tokens seen at
    least min_count times. Lift 1 is no preference."""
    A = r["assigned"][layer_index]                                      # (N, E)
    toks = r["tokens"]
    ids, inv, counts = np.unique(toks, return_inverse=True, return_counts=True)
    per_tok = np.zeros((len(ids), A.shape[1]))
    np.add.at(per_tok, inv, A)                                          # (V', E) assignments
    share = per_tok / np.maximum(per_tok.sum(axis=1, keepdims=True), 1)
    overall = A.sum(axis=0) / max(A.sum(), 1)                           # (E,)
    lift = share / np.maximum(overall, 1e-12)
    ok = counts >= min_count
    out = []
    for e in range(A.shape[1]):
        order = [t for t in np.argsort(-lift[:, e]) if ok[t]][:n]
        out.append([(int(ids[t]), float(lift[t, e])) for t in order])
    return out


def load_history(metrics: dict) -> tuple[np.ndarray, np.ndarray, list]:
    """From a run's metrics.json: (iterations (R,), loads (R, L, E), MoE layer ids)."""
    hist = [h for h in metrics.get("history", []) if h.get("expert_load")]
    if not hist:
        raise MinimoeError("metrics.json has no expert_load history (a dense run, or none evaluated yet)")
    layers = [i for i, l in enumerate(hist[0]["expert_load"]) if l is not None]
    its = np.array([h["iter"] for h in hist])
    loads = np.array([[h["expert_load"][i] for i in layers] for h in hist])   # (R, L, E)
    return its, loads, layers


# --- figures (matplotlib Figures, built without pyplot; save with minimoe.inspect.plots.save) ------

def _figure(w: float, h: float):
    from matplotlib.figure import Figure
    return Figure(figsize=(w, h), layout="constrained")


def specialization_figure(spec: np.ndarray, layers: list, classes_seen: np.ndarray):
    """One heatmap per layer: character class x expert, colour = share of the class's assignments."""
    L, Q, E = spec.shape
    keep = np.flatnonzero(classes_seen)
    fig = _figure(1.5 + 2.6 * L, 3.2)
    axes = fig.subplots(1, L, squeeze=False)[0]
    for j, ax in enumerate(axes):
        im = ax.imshow(spec[j][keep], cmap="viridis", vmin=0, vmax=max(spec.max(), 1e-9), aspect="auto")
        ax.set_title(f"layer {layers[j]}")
        ax.set_xticks(range(E))
        ax.set_xlabel("expert")
        ax.set_yticks(range(len(keep)), [CLASSES[q] for q in keep] if j == 0 else [])
    fig.colorbar(im, ax=axes, label="share of the class's assignments")
    fig.suptitle(f"specialization: where each kind of character goes (even = {1 / E:.3f})")
    return fig


def coactivation_figure(co: np.ndarray, layers: list):
    """One heatmap per layer: how often experts i and j run for the same token."""
    L, E, _ = co.shape
    fig = _figure(1.5 + 2.6 * L, 3.0)
    axes = fig.subplots(1, L, squeeze=False)[0]
    off = co.copy()
    for j in range(L):
        np.fill_diagonal(off[j], np.nan)                                # the diagonal is the load
    for j, ax in enumerate(axes):
        im = ax.imshow(off[j], cmap="magma", vmin=0, vmax=np.nanmax(off) if np.isfinite(off).any() else 1)
        ax.set_title(f"layer {layers[j]}")
        ax.set_xticks(range(E))
        ax.set_yticks(range(E))
        ax.set_xlabel("expert j")
        if j == 0:
            ax.set_ylabel("expert i")
    fig.colorbar(im, ax=axes, label="share of tokens running both")
    fig.suptitle("co-activation of top-k pairs (diagonal left blank)")
    return fig


def entropy_figure(ent: np.ndarray, layers: list, n_experts: int, loads: np.ndarray):
    """Per layer: the router's mean entropy per token, and the entropy of the load, against log E."""
    fig = _figure(5.5, 3.4)
    ax = fig.add_subplot()
    x = np.arange(len(layers))
    load_ent = -(loads * np.log(np.clip(loads, 1e-12, None))).sum(axis=-1)    # (L,)
    ax.bar(x - 0.2, ent, 0.4, label="per token: H(router probs)")
    ax.bar(x + 0.2, load_ent, 0.4, label="of the load: H(expert shares)")
    ax.axhline(np.log(n_experts), color="#444444", ls=":", lw=1, label=f"log E = {np.log(n_experts):.2f}")
    ax.set_xticks(x, [f"layer {i}" for i in layers])
    ax.set_ylabel("entropy (nats)")
    ax.set_title("routing entropy: low per token = a sure router; low for the load = imbalance")
    ax.legend(fontsize=8)
    return fig


def load_history_figure(its: np.ndarray, loads: np.ndarray, layers: list):
    """One panel per layer: each expert's share of the val assignments at each evaluation."""
    R, L, E = loads.shape
    fig = _figure(1.5 + 3.0 * L, 3.2)
    axes = fig.subplots(1, L, squeeze=False, sharey=True)[0]
    for j, ax in enumerate(axes):
        for e in range(E):
            ax.plot(its, 100 * loads[:, j, e], marker=".", lw=1, label=f"e{e}")
        ax.axhline(100 / E, color="#444444", ls=":", lw=1)
        ax.set_title(f"layer {layers[j]}")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of top-k assignments on val (%)")
    axes[-1].legend(fontsize=7, ncol=2)
    fig.suptitle("expert load over training (dotted: even)")
    return fig


def report(r: dict, classes: np.ndarray, tokenizer=None) -> str:
    """The analysis as text: per layer the entropy and the load, the class table, each expert's
    favourite tokens."""
    E, layers = r["n_experts"], r["layers"]
    ent, ld, spec = routing_entropy(r), load(r), specialization(r, classes)
    seen = np.bincount(classes, minlength=len(CLASSES))
    lines = [f"routing of {r['tokens'].size:,} val tokens through {len(layers)} MoE layers "
             f"({E} experts, top-{r['top_k']}):", "",
             f"{'layer':>5} {'entropy':>8} {'/ log E':>8}   load per expert (% of assignments)"]
    for j, i in enumerate(layers):
        lines.append(f"{i:>5} {ent[j]:>8.3f} {ent[j] / np.log(E):>8.2f}   "
                     + " ".join(f"{100 * x:5.1f}" for x in ld[j]))
    for j, i in enumerate(layers):
        lines += ["", f"layer {i}: share of each class's assignments per expert (%; even {100 / E:.1f})",
                  f"{'class':>8} {'tokens':>7}  " + " ".join(f"{'e' + str(e):>5}" for e in range(E))]
        for q, name in enumerate(CLASSES):
            if seen[q]:
                lines.append(f"{name:>8} {seen[q]:>7}  " + " ".join(f"{100 * x:5.1f}" for x in spec[j, q]))
        fav = top_tokens(r, j)
        show = (lambda t: repr(tokenizer.decode([t]))) if tokenizer is not None else str
        lines.append("favourite tokens (lift = how much more often than the expert's average share):")
        for e, toks in enumerate(fav):
            lines.append(f"   e{e}: " + "  ".join(f"{show(t)} {lift:.1f}x" for t, lift in toks))
    return "\n".join(lines)
