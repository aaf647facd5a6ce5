"""`minimoe quantize`: pack a model's weights, print what each tensor lost, or compare recipes.

    minimoe quantize --model runs/moe --recipe mxfp4-moe --out runs/moe-mxfp4
    minimoe quantize --model runs/moe --report --data tinyshakespeare.txt --plot report.png

With --report and --data, an MoE model also gets the router-precision table: per layer and format,
how often the packed router picks the float router's top-k, and the val loss with it packed.
"""
from __future__ import annotations

import json

from minimoe.commands.common import add_model_args, int_arg, open_model
from minimoe.errors import MinimoeError


def add_parser(sub):
    import argparse

    from minimoe.quant.model import REPORT_RECIPES, recipe_help
    p = sub.add_parser(
        "quantize", help="pack a model's weight matrices (q8_0, q4_0, mxfp4, ...) and report the error",
        description="Pack a model's weight matrices into a block format and print, per tensor, the "
                    "RMSE, the max abs error and the bytes before and after. With --report, compare "
                    "recipes by val loss and weight memory instead.",
        epilog="recipes:\n" + recipe_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--recipe", metavar="NAME", help="which format each weight matrix gets (see below)")
    p.add_argument("--out", metavar="DIR", help="write the quantized checkpoint here")
    p.add_argument("--strict", action="store_true",
                   help="refuse a matrix whose last dim does not split into blocks (default: keep it fp32)")
    p.add_argument("--report", action="store_true",
                   help=f"compare recipes ({', '.join(REPORT_RECIPES)}) by weight memory and val loss")
    p.add_argument("--recipes", metavar="A,B,..", help="with --report: the recipes to compare")
    p.add_argument("--data", metavar="PATH", help="with --report: a text file (or 'shakespeare', 'pydoc'); its last 10%% is the val split")
    p.add_argument("--plot", metavar="FILE", help="with --report: save the figure here (e.g. report.png)")
    p.add_argument("--max-tokens", type=int_arg(lo=1), metavar="N", help="with --report: evaluate only N val tokens")
    p.add_argument("--block-size", type=int_arg(lo=1), metavar="T", help="with --report: window length (default max_seq_len)")
    p.add_argument("--router-formats", metavar="A,B,..", default="q8_0,q4_0,mxfp4",
                   help="with --report on an MoE model: the formats to try on the router alone ('none': skip)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.report:
        return run_report(args)
    if args.data or args.plot or args.recipes or args.max_tokens:
        raise MinimoeError("--data, --plot, --recipes and --max-tokens go with --report")
    if not args.recipe:
        raise MinimoeError("give --recipe NAME (see `minimoe quantize --help`), or --report")
    import minimoe
    from minimoe.quant.model import error_rows, format_error_table, get_recipe
    recipe = get_recipe(args.recipe)                     # a clear error for an unknown name, early
    model = open_model(args)
    qmodel = minimoe.quantize(model, recipe, strict=args.strict)
    rows = error_rows(model, qmodel, recipe)
    if args.json:
        print(json.dumps({"recipe": recipe.name, "tensors": rows}, indent=1))
    else:
        print(format_error_table(rows, title=f"recipe {recipe.name}: {recipe.description}"))
    if args.out:
        qmodel.save(args.out)
        if not args.json:
            print(f"\nwrote {args.out}")
    return 0


def run_report(args) -> int:
    from minimoe.quant.report import (format_report, format_router_precision, plot_report,
                                      quantization_report, router_precision)
    if args.recipe or args.out:
        raise MinimoeError("--report compares recipes and writes no checkpoint; leave out --recipe and --out")
    recipes = [r.strip() for r in args.recipes.split(",")] if args.recipes else None
    model = open_model(args)
    rows = quantization_report(model, args.data, recipes=recipes, block_size=args.block_size,
                               max_tokens=args.max_tokens)
    router_rows = None
    formats = [f.strip() for f in args.router_formats.split(",") if f.strip() not in ("", "none")]
    if model.config.is_moe and args.data and formats:
        router_rows = router_precision(model, args.data, formats, block_size=args.block_size,
                                       max_tokens=args.max_tokens)
    if args.json:
        print(json.dumps({"recipes": rows, "router": router_rows}, indent=1))
    else:
        print(format_report(rows))
        if router_rows:
            print("\n" + format_router_precision(router_rows))
    if args.plot:
        plot_report(rows, args.plot, title=f"what quantization costs {args.model or args.preset}")
        if not args.json:
            print(f"\nwrote {args.plot}")
    return 0
