"""Quantized models: `minimoe.quantize(model, recipe)` packs a model's weight matrices.

Shape legend: C d_model, H heads, G kv heads, D head dim, F ffn width, E experts, V vocab;
BS values per block of a format.

    qmodel = minimoe.quantize(model, "mxfp4-moe")     # a new Model; `model` is untouched
    qmodel(tokens)                                    # same forward / generate API
    qmodel.params["layers.0.moe.experts.gate"]        # QTensor(fmt='mxfp4', shape=(E, F, C), ...)
    rows = error_rows(model, qmodel, "mxfp4-moe")     # per-tensor RMSE, max error, bytes
    print(format_error_table(rows))

The quantized model is an ordinary `Model` whose params dict holds `QTensor`s where the float
matrices were. Nothing in the model code changes: every matrix goes through
`minimoe.kernels.matmul(x, w)`, which accepts a float array or a QTensor, and an MoE layer takes
expert e's weights as `params["...experts.gate"][e]`, which on an (E, F, C) QTensor is expert e's
packed (F, C) QTensor, sharing the bytes (QTensor.__getitem__).

A recipe names the format of each *component*'s weight matrices (components as in
minimoe.params.COMPONENTS). What every recipe keeps in float, and why:

    norms (C,), biases, sinks     vectors: tiny, and every value matters. Never block-quantized.
    router (E, C)                 tiny, and it decides which experts run; llama.cpp never quantizes
                                  it either (ffn_gate_inp). Same for Qwen2-MoE's shared_gate (1, C).
    embedding (V, C)              looked up one row per token, not multiplied, so packing it saves
                                  memory but no matmul bandwidth, and minimoe's lookup reads float
                                  rows. (llama.cpp does pack token_embd; we don't.)
    head (V, C)                   q8_0 in every block recipe. llama.cpp keeps output.weight at a
                                  higher precision than the rest: Q6_K for its 4-bit types, Q8_0 for
                                  Q8_0 and MXFP4_MOE. minimoe has no Q6_K, so q8_0 it is.
                                  With tie_embeddings the head IS the embedding table: it stays float.

A matrix whose last axis is not a multiple of its format's block size (e.g. the shakespeare
presets' FFN widths 344 and 172, which 32 does not divide, on the down projections) cannot be cut
into blocks. It stays float32 and its row in the error table says why (the estimator,
minimoe/inspect/estimate.py, counts it the same way). llama.cpp refuses such a tensor for its
32-value types ("no tensor type fallback is defined"); pass `strict=True` to get that error here.

A recipe may also be a dict {component: format}, e.g. {"experts": "nf4", "attention": "q8_0"};
components it does not name stay float32.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from minimoe.params import COMPONENTS, component, param_shapes

from .qtensor import FORMATS, QTensor, QuantError, bits_per_weight, format_module, quantize

FLOAT = "fp32"                  # the "format" of a tensor a recipe leaves alone
LINEAR = ("attention", "ffn", "experts", "shared_experts")   # the matmuls inside the layers


@dataclass(frozen=True)
class Recipe:
    """Which packed format each component's weight matrices get; components not named stay float."""
    name: str
    description: str
    formats: dict = field(default_factory=dict)     # component -> format name


def _uniform(fmt: str, description: str) -> Recipe:
    return Recipe(fmt, description, {**{c: fmt for c in LINEAR}, "head": "q8_0"})


# The registry. Each entry: name -> Recipe (with a one-line description `minimoe quantize --help`
# and the "unknown recipe" error print).
RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe(FLOAT, "no packing: every tensor stays float32 (the baseline)"),
    _uniform("q8_0", "every weight matrix q8_0 (8.5 bits/weight)"),
    _uniform("q4_1", "every weight matrix q4_1 (5.0 bits/weight); head q8_0"),
    _uniform("q4_0", "every weight matrix q4_0 (4.5 bits/weight); head q8_0"),
    _uniform("mxfp4", "every weight matrix mxfp4 (4.25 bits/weight); head q8_0"),
    _uniform("nf4", "every weight matrix nf4 (4.5 bits/weight, blocks of 64, no GGUF type); head q8_0"),
    Recipe("mxfp4-moe", "routed experts mxfp4, every other matrix q8_0 (llama.cpp's MXFP4_MOE)",
           {"experts": "mxfp4", "attention": "q8_0", "ffn": "q8_0", "shared_experts": "q8_0",
            "head": "q8_0"}),
    Recipe("experts-mxfp4", "routed experts mxfp4, every other tensor as it is (gpt-oss as released: "
           "the rest bf16)", {"experts": "mxfp4"}),
    Recipe("experts-q4_0", "routed experts q4_0, every other tensor as it is", {"experts": "q4_0"}),
    Recipe("q4_0-moe", "routed experts q4_0, every other matrix q8_0",
           {"experts": "q4_0", "attention": "q8_0", "ffn": "q8_0", "shared_experts": "q8_0",
            "head": "q8_0"}),
]}

# What the quantization report compares, in this order (see minimoe/quant/report.py).
REPORT_RECIPES = ["fp32", "q8_0", "q4_1", "q4_0", "mxfp4", "mxfp4-moe", "q4_0-moe"]


def recipe_help() -> str:
    """One line per recipe: its name and description."""
    width = max(len(n) for n in RECIPES)
    return "\n".join(f"  {n:<{width}}  {r.description}" for n, r in RECIPES.items())


def get_recipe(recipe) -> Recipe:
    """A Recipe from a name in RECIPES (case-insensitive), a dict {component: format}, or a Recipe."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        formats = {}
        for comp, fmt in recipe.items():
            if comp not in COMPONENTS:
                raise QuantError(f"recipe dict: unknown component {comp!r}; components are "
                                 f"{', '.join(COMPONENTS)}")
            if fmt is None or str(fmt).lower() == FLOAT:
                continue
            fmt = format_module(fmt).NAME                      # QuantError for an unknown format
            if comp == "norms":
                raise QuantError("recipe dict: norms are vectors and always stay float; "
                                 f"found 'norms': {fmt!r}")
            if comp == "embedding":
                raise QuantError("recipe dict: minimoe looks up embedding rows in float and cannot "
                                 f"pack the embedding table; found 'embedding': {fmt!r}")
            formats[comp] = fmt
        return Recipe("custom", "custom: " + ", ".join(f"{c} {f}" for c, f in formats.items()), formats)
    if not isinstance(recipe, str):
        raise QuantError(f"a recipe is a name or a dict {{component: format}}, got {type(recipe).__name__}")
    found = RECIPES.get(recipe.lower())
    if found is None:
        raise QuantError(f"unknown recipe {recipe!r}; known recipes:\n{recipe_help()}")
    return found


# ----------------------------------------------------------------------------------------
# The plan: which format each parameter gets
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlanEntry:
    shape: tuple
    component: str
    fmt: str             # a format name, or "fp32" for a tensor left float
    note: str = ""       # why a tensor the recipe names stays float


def is_matrix(name: str, shape: tuple) -> bool:
    """A weight matrix (2-D, or a 3-D stack of experts); not a norm scale, a bias or the sinks."""
    return len(shape) >= 2 and not name.endswith(("bias", ".sinks"))


def plan_quantization(config, recipe, strict: bool = False) -> dict[str, PlanEntry]:
    """name -> PlanEntry for every parameter of `config` under `recipe`."""
    recipe = get_recipe(recipe)
    plan = {}
    for name, shape in param_shapes(config).items():
        comp = component(name)
        fmt = recipe.formats.get(comp, FLOAT)
        note = ""
        if fmt != FLOAT and name.endswith("shared_gate.weight"):
            fmt, note = FLOAT, "a gate, like the router: kept fp32"
        elif fmt != FLOAT and not is_matrix(name, shape):
            fmt = FLOAT                                    # vectors: silently float, as documented
        elif fmt != FLOAT and shape[-1] % FORMATS[fmt].BLOCK_SIZE:
            bs = FORMATS[fmt].BLOCK_SIZE
            if strict:
                raise QuantError(f"tensor {name!r} with shape {tuple(shape)}: {fmt} packs the last "
                                 f"dimension in blocks of {bs}, but it is {shape[-1]}; leave out "
                                 f"strict=True to keep such tensors float32")
            fmt, note = FLOAT, f"last dim {shape[-1]} is not a multiple of {bs}: kept fp32 (not {fmt})"
        if comp == "embedding" and config.tie_embeddings and "head" in recipe.formats:
            note = f"tied with the head: kept fp32 (the head would be {recipe.formats['head']})"
        plan[name] = PlanEntry(tuple(shape), comp, fmt, note)
    return plan


# ----------------------------------------------------------------------------------------
# Quantize a model
# ----------------------------------------------------------------------------------------

def is_quantized(model) -> bool:
    return any(isinstance(v, QTensor) for v in model.params.values())


def quantize_model(model, recipe, strict: bool = False):
    """A new Model with the weight matrices packed as `recipe` says (see the module docstring).

    `model` is not modified: packed tensors are new, float tensors are copied. The new model has
    the same config (a copy), tokenizer and forward/generate API.
    """
    from minimoe.model import Model
    if is_quantized(model):
        packed = next(f"{n!r} ({v.fmt})" for n, v in model.params.items() if isinstance(v, QTensor))
        raise QuantError(f"this model is already quantized (tensor {packed}); quantize the float "
                         f"checkpoint instead, since packing twice adds the errors of both")
    plan = plan_quantization(model.config, recipe, strict)
    params = {}
    for name, arr in model.params.items():
        fmt = plan[name].fmt
        if fmt == FLOAT:
            params[name] = np.array(arr, copy=True)
        else:
            params[name] = quantize(arr, fmt, name=name)        # shape -> packed (*shape[:-1], C//BS*BB)
    return Model(model.config.replace(), params=params, tokenizer=model.tokenizer)


# ----------------------------------------------------------------------------------------
# What it cost: the per-tensor error table
# ----------------------------------------------------------------------------------------

def error_rows(original, quantized, recipe=None) -> list[dict]:
    """One dict per parameter: name, shape, fmt, rmse, max_abs, rel_rmse (rmse / rms of the weight),
    bytes_before, bytes_after, note (from the recipe's plan, if `recipe` is given)."""
    notes = {}
    if recipe is not None:
        notes = {n: e.note for n, e in plan_quantization(original.config, recipe).items()}
    rows = []
    for name in param_shapes(original.config):                  # model order, not file order
        w, q = original.params[name], quantized.params[name]
        if isinstance(q, QTensor):
            w_hat, fmt = q.dequantize(), q.fmt                  # (shape) float32
        else:
            w_hat, fmt = np.asarray(q), FLOAT
        w = np.asarray(w, dtype=np.float64)
        err = w_hat.astype(np.float64) - w                      # (shape)
        rms_w = float(np.sqrt(np.mean(w * w))) if w.size else 0.0
        rmse = float(np.sqrt(np.mean(err * err))) if w.size else 0.0
        rows.append(dict(name=name, shape=tuple(w.shape), fmt=fmt, n=int(w.size), rmse=rmse,
                         max_abs=float(np.abs(err).max()) if w.size else 0.0,
                         rel_rmse=rmse / rms_w if rms_w else 0.0, sq_err=float(np.sum(err * err)),
                         bytes_before=int(np.asarray(original.params[name]).nbytes),
                         bytes_after=int(q.nbytes), note=notes.get(name, "")))
    return rows


def totals(rows: list[dict]) -> dict:
    """Whole-model sums: bytes before/after, their ratio, bits per weight, overall RMSE."""
    n = sum(r["n"] for r in rows)
    before = sum(r["bytes_before"] for r in rows)
    after = sum(r["bytes_after"] for r in rows)
    packed = [r for r in rows if r["fmt"] != FLOAT]
    return dict(n=n, bytes_before=before, bytes_after=after, ratio=before / after if after else 0.0,
                bits_per_weight=8 * after / n if n else 0.0,
                rmse=float(np.sqrt(sum(r["sq_err"] for r in rows) / n)) if n else 0.0,
                max_abs=max((r["max_abs"] for r in rows), default=0.0),
                n_packed=sum(r["n"] for r in packed),
                packed_bytes=sum(r["bytes_after"] for r in packed))


def format_error_table(rows: list[dict], title: str | None = None) -> str:
    """The per-tensor table `minimoe quantize` prints, with totals and footnotes."""
    head = f"{'tensor':<34} {'shape':<15} {'format':<6} {'RMSE':>9} {'max|err|':>9} {'rel RMSE':>8} " \
           f"{'bytes before':>13} {'bytes after':>12}"
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    notes: list[str] = []                               # footnotes, each text once
    for r in rows:
        mark = ""
        if r["note"]:
            if r["note"] not in notes:
                notes.append(r["note"])
            mark = f" [{notes.index(r['note']) + 1}]"
        lines.append(f"{r['name']:<34} {str(r['shape']):<15} {r['fmt']:<6} {r['rmse']:>9.2e} "
                     f"{r['max_abs']:>9.2e} {100 * r['rel_rmse']:>7.2f}% {r['bytes_before']:>13,} "
                     f"{r['bytes_after']:>12,}{mark}")
    t = totals(rows)
    lines.append("-" * len(head))
    lines.append(f"{'total':<34} {t['n']:>15,} {'':<6} {t['rmse']:>9.2e} {t['max_abs']:>9.2e} {'':>8} "
                 f"{t['bytes_before']:>13,} {t['bytes_after']:>12,}")
    lines.append(f"{t['bytes_before'] / 2**20:.2f} MiB -> {t['bytes_after'] / 2**20:.2f} MiB "
                 f"({t['ratio']:.2f}x smaller), {t['bits_per_weight']:.2f} bits per weight overall; "
                 f"{t['n_packed']:,} of {t['n']:,} weights packed "
                 f"({8 * t['packed_bytes'] / max(t['n_packed'], 1):.2f} bits each)")
    for i, note in enumerate(notes, 1):
        lines.append(f"[{i}] {note}")
    return "\n".join(lines)


def predicted_bytes(config, recipe) -> int:
    """Bytes of all parameters under `recipe`, from the shapes alone: a packed tensor costs
    n * bits_per_weight / 8, a float one 4 bytes per value."""
    total = 0
    for entry in plan_quantization(config, recipe).values():
        n = int(np.prod(entry.shape))
        total += n * 4 if entry.fmt == FLOAT else round(n * bits_per_weight(entry.fmt) / 8)
    return total
