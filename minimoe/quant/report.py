"""What quantization costs a model: val loss and weight memory, recipe by recipe.

Shape legend: N tokens of the evaluation split.

    rows = quantization_report(model, "tinyshakespeare.txt")   # fp32, q8_0, q4_1, q4_0, mxfp4, mixed
    print(format_report(rows))
    plot_report(rows, "quant_report.png")

For each recipe (minimoe/quant/model.py) the model is quantized, and we measure
    weight_bytes     bytes of every parameter as the quantized model holds them (packed or float)
    bits_per_weight  8 * weight_bytes / number of parameters (float32 is 32)
    rel_rmse         sqrt(sum of squared weight errors / sum of squared weights), whole model
    val_loss         minimoe.evaluate.evaluate on the validation split (the last 10% of the text,
                     tokenized with the model's own tokenizer); identical windows for every recipe
    delta_loss       val_loss - the fp32 val_loss
The `minimoe quantize --report` command prints the table and draws the figure.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .model import FLOAT, REPORT_RECIPES, error_rows, get_recipe, quantize_model, totals


def quantization_report(model, data=None, recipes=None, block_size: int | None = None,
                        max_tokens: int | None = None, batch_size: int = 8) -> list[dict]:
    """One dict per recipe (see the module docstring). `data` is a text file, "pydoc" or
    "shakespeare" (its val split is used), or an int array of tokens (used whole), or None to skip
    the val loss."""
    from minimoe.evaluate import eval_tokens, evaluate
    recipes = list(REPORT_RECIPES if recipes is None else recipes)
    tokens = None
    if data is not None:
        if isinstance(data, (str, os.PathLike)):
            tokens = eval_tokens(model, data, "val")                  # (N,) the val split
        else:
            tokens = np.asarray(data, dtype=np.int64)
    rows = []
    for name in recipes:
        recipe = get_recipe(name)
        qmodel = model if recipe.name == FLOAT else quantize_model(model, recipe)
        t = totals(error_rows(model, qmodel))
        row = dict(recipe=recipe.name, description=recipe.description,
                   mixed=bool(_differing(recipe) - {"head"}),      # e.g. experts apart
                   weight_bytes=t["bytes_after"],
                   bits_per_weight=t["bits_per_weight"], n_params=t["n"],
                   rel_rmse=_relative_rmse(model, t), packed_fraction=t["n_packed"] / t["n"],
                   val_loss=None, perplexity=None, n_tokens=None)
        if tokens is not None:
            r = evaluate(qmodel, tokens, block_size=block_size, batch_size=batch_size, max_tokens=max_tokens)
            row.update(val_loss=r["loss"], perplexity=r["perplexity"], n_tokens=r["n_tokens"])
        rows.append(row)
    base = next((r["val_loss"] for r in rows if r["recipe"] == FLOAT and r["val_loss"] is not None), None)
    for r in rows:
        r["delta_loss"] = None if base is None or r["val_loss"] is None else r["val_loss"] - base
    return rows


def _differing(recipe) -> set:
    """The components whose format differs from the recipe's most common one."""
    formats = list(recipe.formats.values())
    common = max(set(formats), key=formats.count) if formats else None
    return {c for c, f in recipe.formats.items() if f != common}


def _relative_rmse(model, t: dict) -> float:
    """Whole-model weight error relative to the weights' own RMS."""
    ss = sum(float(np.sum(np.asarray(w, np.float64) ** 2)) for w in model.params.values())
    return math.sqrt(t["rmse"] ** 2 * t["n"] / ss) if ss else 0.0


def format_report(rows: list[dict]) -> str:
    """The report as a text table."""
    has_loss = any(r["val_loss"] is not None for r in rows)
    head = f"{'recipe':<10} {'weights':>10} {'bits/w':>7} {'packed':>7} {'rel RMSE':>9}"
    if has_loss:
        head += f" {'val loss':>9} {'Δ vs fp32':>10} {'ppl':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = (f"{r['recipe']:<10} {r['weight_bytes'] / 2**20:>6.2f} MiB {r['bits_per_weight']:>7.2f} "
                f"{100 * r['packed_fraction']:>6.1f}% {100 * r['rel_rmse']:>8.2f}%")
        if has_loss:
            d = r["delta_loss"]
            line += (f" {r['val_loss']:>9.4f} {'' if d is None else f'{d:+.4f}':>10} "
                     f"{r['perplexity']:>8.3f}")
        lines.append(line)
    if has_loss:
        lines.append(f"val loss: mean cross-entropy (nats) over {rows[0]['n_tokens']:,} tokens of the val split")
    else:
        lines.append("pass data (--data PATH) to measure the val loss of each recipe")
    lines.append("packed: share of the parameters stored in a block format; the rest stay float32")
    for r in rows:
        lines.append(f"  {r['recipe']:<10} {r['description']}")
    return "\n".join(lines)


def plot_report(rows: list[dict], path, title: str | None = None) -> str:
    """Two panels: val loss per recipe (or weight error, without data), and val loss against
    weight memory. Saved to `path` (PNG/SVG/PDF by extension); returns the path."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    names = [r["recipe"] for r in rows]
    mib = np.array([r["weight_bytes"] / 2**20 for r in rows])          # (R,)
    has_loss = all(r["val_loss"] is not None for r in rows)
    colors = ["#444444" if r["recipe"] == FLOAT else "#d62728" if r["mixed"] else "#1f77b4" for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    if has_loss:
        loss = np.array([r["val_loss"] for r in rows])                  # (R,)
        base = loss[names.index(FLOAT)] if FLOAT in names else 0.0
        ax1.bar(names, loss - base, color=colors)                         # bars start at 0
        ax1.axhline(0.0, color="#444444", lw=0.8)
        for i, v in enumerate(loss):
            ax1.annotate(f"{v:.3f}", (i, v - base), ha="center", fontsize=8, textcoords="offset points",
                         xytext=(0, 3 if v >= base else -10))
        if FLOAT in names:
            ax1.set_ylabel(f"val loss − fp32 val loss ({base:.3f})")
            ax1.set_title("what each recipe adds to the val loss")
        else:
            ax1.set_ylabel("val loss (nats / token)")
            ax1.set_title("validation loss per recipe")
        ax2.scatter(mib, loss, c=colors, s=40, zorder=3)
        for x, y, n in zip(mib, loss, names):
            ax2.annotate(n, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax2.set_ylabel("val loss (nats / token)")
        ax2.set_title("loss against memory (lower left is better)")
    else:
        err = np.array([100 * r["rel_rmse"] for r in rows])
        ax1.bar(names, err, color=colors)
        ax1.set_ylabel("relative weight RMSE (%)")
        ax1.set_title("weight error per recipe (no data given)")
        ax2.bar(names, mib, color=colors)
        ax2.set_ylabel("weights (MiB)")
        ax2.set_title("weight memory per recipe")
    if has_loss:
        ax2.set_xlabel("weights (MiB)")
        ax2.grid(alpha=0.3)
    for ax in (ax1,) if has_loss else (ax1, ax2):
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(title or "what quantization costs: grey fp32, blue one format, red mixed recipes")
    fig.tight_layout()
    from minimoe.inspect.plots import save
    try:
        return save(fig, path)
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Router precision: may the router be quantized?
# ----------------------------------------------------------------------------------------------
ROUTER_FORMATS = ("q8_0", "q4_0", "mxfp4")


def router_precision(model, data, formats=ROUTER_FORMATS, block_size: int | None = None,
                     max_tokens: int | None = None, batch_size: int = 8) -> list[dict]:
    """Per MoE layer and format: what packing that layer's router (E, C) changes.

    agreement  over the val tokens, with the float model's own router inputs x (N, C) at that layer:
               the share of tokens whose quantized router picks the same set of K experts as the
               float one ("exact"), and the mean share of the K picks the two have in common
               ("overlap"). Only the router's matrix differs, so this isolates its error.
    val_loss   the val loss (minimoe.evaluate) with only that layer's router packed, against
               the float model's; a row with layer "all" packs every router at once.
    Rows: {"layer", "format", "exact", "overlap", "val_loss", "float_val_loss", "delta_loss"}.
    """
    from minimoe.errors import MinimoeError
    from minimoe.evaluate import eval_tokens, evaluate
    from minimoe.model import Model
    from minimoe.nn import router

    from .qtensor import quantize
    cfg = model.config
    layers = [i for i in range(cfg.n_layers) if cfg.is_moe_layer(i)]
    if not layers:
        raise MinimoeError("router precision: this model has no MoE layer, so no router")
    tokens = eval_tokens(model, data, "val") if isinstance(data, (str, os.PathLike)) else np.asarray(data)
    if max_tokens is not None:
        tokens = tokens[: int(max_tokens) + 1]
    T = int(block_size or cfg.max_seq_len)
    name = lambda i: f"layers.{i}.moe.router.weight"
    packed = {(i, f): quantize(np.asarray(model.params[name(i)]), f, name=name(i)) for i in layers for f in formats}
    # the float model's router inputs, window by window; the top-k of both routers on them
    same = {k: [0, 0.0] for k in packed}                               # exact matches, overlap sum
    n = 0
    starts = np.arange(0, max(len(tokens) - 1, 0) // T) * T
    for b in range(0, len(starts), batch_size):
        idx = starts[b: b + batch_size, None] + np.arange(T)             # (B, T)
        _, cache = model.forward(tokens[idx])
        for i in layers:
            x = cache["layers"][i][3]["router"][0][0]                    # (N, C) the router's input
            p = {k[len(f"layers.{i}.moe."):]: v for k, v in model.params.items()
                 if k.startswith(f"layers.{i}.moe.router.")}
            bias = (p.get("router.bias"), p.get("router.e_score_correction_bias"))
            ref = np.sort(router.forward(x, p["router.weight"], bias[0], cfg, bias[1])[1], axis=1)  # (N, K)
            for f in formats:
                wq = packed[(i, f)].dequantize().astype(x.dtype)
                got = np.sort(router.forward(x, wq, bias[0], cfg, bias[1])[1], axis=1)
                common = (got[:, :, None] == ref[:, None, :]).any(axis=2).sum(axis=1)   # (N,)
                same[(i, f)][0] += int((common == ref.shape[1]).sum())
                same[(i, f)][1] += float(common.sum() / ref.shape[1])
        n += idx.size
    if n == 0:
        raise MinimoeError(f"router precision: need at least {T + 1} val tokens for one window of {T}")
    base = evaluate(model, tokens, block_size=T, batch_size=batch_size)["loss"]
    rows = []

    def with_packed(routers: dict) -> float:
        params = dict(model.params)
        params.update(routers)
        return evaluate(Model(cfg, params=params, tokenizer=model.tokenizer), tokens, block_size=T,
                        batch_size=batch_size)["loss"]

    for f in formats:
        for i in layers:
            loss = with_packed({name(i): packed[(i, f)]})
            rows.append(dict(layer=i, format=f, exact=same[(i, f)][0] / n, overlap=same[(i, f)][1] / n,
                             val_loss=loss, float_val_loss=base, delta_loss=loss - base, n_tokens=n))
        loss = with_packed({name(i): packed[(i, f)] for i in layers})
        rows.append(dict(layer="all", format=f, exact=None, overlap=None, val_loss=loss,
                         float_val_loss=base, delta_loss=loss - base, n_tokens=n))
    return rows


def format_router_precision(rows: list[dict]) -> str:
    """The router-precision rows as a text table."""
    head = f"{'layer':>5} {'format':<7} {'same top-k':>10} {'overlap':>8} {'val loss':>9} {'Δ vs float':>11}"
    lines = [f"router precision: each router packed alone (float val loss {rows[0]['float_val_loss']:.4f})",
             head, "-" * len(head)]
    for r in rows:
        agree = "" if r["exact"] is None else f"{100 * r['exact']:>9.2f}%"
        overlap = "" if r["overlap"] is None else f"{100 * r['overlap']:>7.2f}%"
        lines.append(f"{r['layer']:>5} {r['format']:<7} {agree:>10} {overlap:>8} {r['val_loss']:>9.4f} "
                     f"{r['delta_loss']:>+11.5f}")
    lines.append(f"same top-k: tokens (of {rows[0]['n_tokens']:,}) whose K experts are the float router's, on "
                 f"the float model's inputs; overlap: the share of the K picks in common; layer 'all': "
                 f"every router packed at once")
    return "\n".join(lines)
