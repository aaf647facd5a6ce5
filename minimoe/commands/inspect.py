"""`minimoe inspect`: trace a prompt through a model and show what each token touched.

    minimoe inspect --preset shakespeare-moe --prompt "To be, or not to be" --plot out/
    minimoe inspect --model ckpt --prompt "..." --recipe q4_0 --json

It runs the prompt (a prefill, filling a KV cache), then decodes one more token, each under
`minimoe.trace()`, and prints:
  * the per-op table of that one decoded token: FLOPs, weight bytes at the stored precision,
    activation and KV-cache bytes, time;
  * the totals: FLOPs per token and weight bytes per token (decode, and the prefill's average),
    active against total parameters;
  * the derived views (time shares, expert load, arithmetic intensity);
  * the routing of the prompt: for each token, the experts each layer chose.
With --plot DIR it draws every figure of minimoe/inspect/plots.py; the FLOPs/bytes bars trace the
same token in fp32 and in each quantized recipe.

    minimoe inspect --model runs/moe --routing --data tinyshakespeare.txt --plot out/

With --routing it analyses the routing of the val split instead (minimoe/inspect/routing.py):
entropy and load per layer, where each character class goes, each expert's favourite tokens, and
the figures specialization.png, coactivation.png, entropy.png and, from the run's metrics.json
(DIR/metrics.json, or --metrics FILE), load_over_training.png.

Shape legend: T prompt tokens, V vocab.
"""
from __future__ import annotations

import json
import os

import numpy as np

from minimoe.commands.common import add_model_args, open_model
from minimoe.errors import MinimoeError


def add_parser(sub):
    p = sub.add_parser("inspect", help="trace a prompt: FLOPs, bytes and time per op, routing, plots",
                       description=__doc__.split("\n\n")[0])
    add_model_args(p)
    p.add_argument("--prompt", default="To be, or not to be: that is the question.",
                   help="the text to trace")
    p.add_argument("--recipe", default=None, help="quantize first with this recipe "
                   "(see `minimoe quantize --help`): q8_0, q4_0, q4_1, mxfp4, mxfp4-moe, ...")
    p.add_argument("--plot", metavar="DIR", help="write the figures (PNG) into DIR")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--routing", action="store_true",
                   help="analyse the routing of --data's val split (specialization, co-activation, "
                        "entropy, load over training) instead of tracing a prompt")
    p.add_argument("--data", metavar="PATH", help="with --routing: a text file, 'shakespeare' or 'pydoc'")
    p.add_argument("--metrics", metavar="FILE", help="with --routing: a run's metrics.json (default: "
                   "the one in --model's folder, if any)")
    p.add_argument("--max-tokens", type=int, default=20000, metavar="N",
                   help="with --routing: analyse the first N val tokens (default 20000)")
    p.set_defaults(func=run)


def run_routing(args) -> int:
    """`minimoe inspect --routing`: the routing analysis of the val split (see the module doc)."""
    from minimoe.inspect import routing
    from minimoe.inspect.plots import save
    if not args.data:
        raise MinimoeError("--routing needs --data PATH (the text whose val split is routed)")
    model = open_model(args)
    r = routing.collect(model, args.data, max_tokens=args.max_tokens)
    classes = routing.token_classes(r, model.tokenizer)
    metrics = None
    path = args.metrics or (os.path.join(args.model, "metrics.json") if args.model else None)
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            metrics = json.load(f)
    elif args.metrics:
        raise MinimoeError(f"--metrics {args.metrics}: no such file")
    figures = []
    if args.plot:
        L = r["layers"]
        seen = np.bincount(classes, minlength=len(routing.CLASSES))
        figs = {"specialization": routing.specialization_figure(routing.specialization(r, classes), L, seen),
                "coactivation": routing.coactivation_figure(routing.coactivation(r), L),
                "entropy": routing.entropy_figure(routing.routing_entropy(r), L, r["n_experts"], routing.load(r))}
        if metrics is not None:
            figs["load_over_training"] = routing.load_history_figure(*routing.load_history(metrics))
        figures = [save(fig, os.path.join(args.plot, f"{stem}.png")) for stem, fig in figs.items()]
    if args.json:
        print(json.dumps({"model": args.model or args.preset, "tokens": int(r["tokens"].size),
                          "layers": r["layers"], "classes": list(routing.CLASSES),
                          "entropy": routing.routing_entropy(r).tolist(), "load": routing.load(r).tolist(),
                          "specialization": routing.specialization(r, classes).tolist(),
                          "coactivation": routing.coactivation(r).tolist(), "figures": figures}, indent=1))
        return 0
    print(routing.report(r, classes, model.tokenizer))
    if metrics is None:
        print("\n(no metrics.json: pass --metrics FILE for the load over training)")
    if figures:
        print("\nfigures:\n" + "\n".join(f"  {f}" for f in figures))
    return 0


def trace_prompt(model, ids: np.ndarray, warm_up: bool = True):
    """(prompt trace, one-token trace): the prompt as one prefill into a KV cache, then the
    greedy next token decoded from that cache. With warm_up, the same runs once untraced first, so
    that first-call costs (Numba compiling or loading its kernels) stay out of the times."""
    import minimoe
    if warm_up:
        trace_prompt(model, ids, warm_up=False)                  # the same traced path, discarded
    kv = model.new_kv_cache(1, len(ids) + 1)
    with minimoe.trace() as prompt:
        logits, _ = model.forward(ids[None], kv)                 # (1, T, V)
    nxt = logits[:, -1].argmax(axis=-1)                          # (1,)
    with minimoe.trace() as token:
        model.forward(nxt[:, None], kv)                          # (1, 1) at position T
    return prompt, token


def quantized(model, recipe: str):
    import minimoe
    return model if recipe in (None, "fp32") else minimoe.quantize(model, recipe)


def recipe_traces(model, ids: np.ndarray, recipes) -> dict:
    """{recipe: one-token trace} of the same prompt, for fp32 and each recipe."""
    return {r: trace_prompt(quantized(model, r), ids)[1] for r in recipes}


def encode(model, prompt: str) -> np.ndarray:
    tok = model.tokenizer
    if tok is None:
        raise MinimoeError("this model has no tokenizer.json, so a text prompt cannot be encoded")
    ids = np.asarray(tok.encode(prompt), dtype=np.int64)
    if len(ids) == 0:
        raise MinimoeError("the prompt encodes to no tokens")
    if len(ids) + 1 > model.config.max_seq_len:
        raise MinimoeError(f"the prompt is {len(ids)} tokens; this model sees at most "
                           f"{model.config.max_seq_len} (max_seq_len), one of them the decoded token")
    return ids


def routing_lines(trace, tokenizer, max_tokens: int = 80) -> list[str]:
    """One line per prompt token: its text, then each layer's chosen experts (and weights)."""
    rows = trace.token_routing()
    if not rows or not rows[0]["layers"]:
        return ["(a dense model: no routing)"]
    lines = []
    for r in rows[:max_tokens]:
        text = repr(tokenizer.decode([r["token"]]))[1:-1] if tokenizer else str(r["token"])
        cells = [f"L{i}: " + ",".join(f"{e}({w:.2f})" for e, w in zip(c["experts"], c["weights"]))
                 for i, c in r["layers"].items()]
        lines.append(f"  {r['position']:>4} {text:<6} " + "  ".join(cells))
    if len(rows) > max_tokens:
        lines.append(f"  ... {len(rows) - max_tokens} more tokens")
    return lines


def report(model, prompt, token, recipe, machine) -> str:
    from minimoe.inspect import views
    tp, pp = token.per_token(), prompt.per_token()
    counts = model.param_counts()
    a = views.active_params(token, model)["per_token"]
    lines = [f"one token, decoded at position {token.steps[0]['start']} after the "
             f"{prompt.n_tokens}-token prompt ({recipe or 'fp32'}):", "", token.summary(), "",
             "totals:",
             f"  FLOPs per token      decode {tp['flops']:,.0f} (matmul {tp['matmul_flops']:,.0f} + "
             f"attention {tp['attention_flops']:,.0f}; elementwise {tp['elementwise_flops']:,.0f} apart)",
             f"                       prefill average {pp['flops']:,.0f} over {prompt.n_tokens} tokens",
             f"  weight bytes/token   decode {tp['weight_bytes']:,.0f}; prefill average "
             f"{pp['weight_bytes']:,.0f} (a prefill reads each weight once for all its tokens)",
             f"  KV-cache bytes read  {tp['kv_cache_bytes']:,.0f} by the decoded token",
             f"  parameters           {a['non_embedding']:,.0f} active (+ {a['embedding_row']} embedding "
             f"row) of {counts['total']:,} total ({100 * a['active_fraction']:.1f}%)", "",
             views.format_views(prompt, model, machine), "",
             "routing of the prompt (position, token, layer: expert(weight) for each of the top-k):"]
    lines += routing_lines(prompt, model.tokenizer)
    return "\n".join(lines)


def run(args) -> int:
    if args.routing:
        return run_routing(args)
    if args.data or args.metrics:
        raise MinimoeError("--data and --metrics go with --routing")
    from minimoe.inspect import plots, views
    from minimoe.inspect.machine import machine as measured_machine
    model = open_model(args)
    ids = encode(model, args.prompt)
    qmodel = quantized(model, args.recipe)
    prompt, token = trace_prompt(qmodel, ids)
    mach = measured_machine()
    figures = []
    if args.plot:
        from minimoe.quant.model import REPORT_RECIPES
        traces = recipe_traces(model, ids, REPORT_RECIPES)
        figs = plots.all_figures(prompt, model.tokenizer, traces, mach)
        for stem, fig in figs.items():
            figures.append(plots.save(fig, os.path.join(args.plot, f"{stem}.png")))
    if args.json:
        out = {"model": args.model or args.preset, "recipe": args.recipe or "fp32",
               "prompt": args.prompt, "machine": mach, "token": token.to_dict(),
               "prompt_trace": prompt.to_dict(),
               "views": {"active_params": views.active_params(token, model),
                         "time_shares": views.time_shares(prompt),
                         "expert_load": views.expert_load(prompt),
                         "arithmetic_intensity": views.arithmetic_intensity(prompt, mach, fold=True)},
               "figures": figures}
        print(json.dumps(out, indent=1, default=float))
        return 0
    print(f"model: {args.model or args.preset}   recipe: {args.recipe or 'fp32'}   "
          f"prompt: {len(ids)} tokens")
    print(report(qmodel, prompt, token, args.recipe, mach))
    if figures:
        print("\nfigures:\n" + "\n".join(f"  {f}" for f in figures))
    return 0
