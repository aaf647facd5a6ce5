"""`minimoe bench`: how fast the kernels and the model run on this machine.

    minimoe bench machine                 memory bandwidth and matmul peak (measured once, cached)
    minimoe bench kernels [--json]        fused 4/8-bit GEMV and GEMM against float32 BLAS
    minimoe bench decode --preset NAME    prefill and decode tokens/s per recipe and backend
    minimoe bench moe-scaling [--plot F]  time per token as the expert count grows
    minimoe bench load                    prefill and decode with another program competing, against quiet
    minimoe bench big --preset NAME       a real-size checkpoint, memory-mapped: RSS, bytes/token, tok/s
                                          against the estimator

Every subcommand prints a table, or with --json one JSON object on stdout (progress goes to stderr).
"""
from __future__ import annotations

import json
import sys

from minimoe.errors import MinimoeError


def add_parser(sub):
    from minimoe.commands.common import int_arg
    p = sub.add_parser("bench", help="benchmark the kernels, decoding and MoE scaling on this machine")
    bs = p.add_subparsers(dest="bench", metavar="WHAT")

    m = bs.add_parser("machine", help="measure memory bandwidth and the float32 matmul peak (cached)")
    m.add_argument("--refresh", action="store_true", help="measure again even if cached")
    m.add_argument("--quick", action="store_true", help="small arrays: fast, less accurate")
    m.set_defaults(func=run_machine)

    k = bs.add_parser("kernels", help="fused packed GEMV/GEMM against float32 BLAS on one big weight")
    k.add_argument("--rows", type=int_arg(lo=1), default=14336, help="output rows O of the weight (default 14336)")
    k.add_argument("--cols", type=int_arg(lo=32), default=4096, help="input width I of the weight (default 4096)")
    k.add_argument("--batch", type=int_arg(lo=1), default=64, help="rows of x for the prefill case (default 64)")
    k.add_argument("--formats", default="q4_0,q8_0,mxfp4,q4_1", help="comma-separated formats")
    k.add_argument("--repeat", type=int_arg(lo=1), default=5, help="timed runs per case; the best is kept")
    k.add_argument("--no-twins", action="store_true", help="skip the NumPy twins")
    k.add_argument("--no-compile", action="store_true", help="skip the compile-time measurement")
    k.set_defaults(func=run_kernels)

    d = bs.add_parser("decode", help="prefill and decode tokens/s of a preset, per recipe and backend")
    d.add_argument("--preset", default="mixtral-mini", help="model preset (default mixtral-mini)")
    d.add_argument("--recipes", default="fp32,q8_0,q4_1,q4_0,mxfp4,mxfp4-moe,q4_0-moe",
                   help="comma-separated quantization recipes")
    d.add_argument("--backends", default="numba,numpy", help="comma-separated backends")
    d.add_argument("--prompt-tokens", type=int_arg(lo=1), default=256)
    d.add_argument("--new-tokens", type=int_arg(lo=1), default=128)
    d.add_argument("--numpy-new-tokens", type=int_arg(lo=1), default=8,
                   help="new tokens on the numpy backend (its twins are slow by design)")
    d.add_argument("--seed", type=int_arg(lo=0), default=0)
    d.add_argument("--quick-peaks", action="store_true",
                   help="measure the cache curve at two sizes only (a rougher ceiling, for quick checks)")
    d.set_defaults(func=run_decode)

    s = bs.add_parser("moe-scaling", help="decode time per token as experts go 4..64 at top-2")
    s.add_argument("--models", default="small,mixtral-mini",
                   help="'small' (in cache) and/or a preset name (default small,mixtral-mini)")
    s.add_argument("--experts", default="4,8,16,32,64", help="comma-separated expert counts")
    s.add_argument("--recipe", default="fp32", help="quantization recipe of every model (default fp32)")
    s.add_argument("--prompt-tokens", type=int_arg(lo=1), default=32)
    s.add_argument("--new-tokens", type=int_arg(lo=1), default=64)
    s.add_argument("--plot", default="moe_scaling.png", metavar="PNG", help="where to save the plot ('' for none)")
    s.set_defaults(func=run_scaling)

    ld = bs.add_parser("load", help="prefill and decode per call, quiet against a busy core and a training run")
    ld.add_argument("--presets", default="shakespeare-moe,mixtral-mini", help="comma-separated presets")
    ld.add_argument("--competitors", default="quiet,busy,train", help="comma-separated: quiet, busy, train")
    ld.add_argument("--calls", type=int, default=40, help="timed calls per op and competitor (default 40)")
    ld.add_argument("--rounds", type=int, default=4, help="alternating rounds of quiet and loaded blocks (default 4)")
    ld.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ld.set_defaults(func=run_load)

    b = bs.add_parser("big", help="write a real-size random checkpoint, map it, decode: measured against "
                                   "the estimator")
    b.add_argument("--preset", default="gpt-oss-20b", help="gpt-oss-20b (default), olmoe-1b-7b or qwen3-30b-a3b")
    b.add_argument("--dir", default=None, metavar="FOLDER",
                   help="where the checkpoint is written, or reused if already there "
                        "(default ./minimoe_out/big/PRESET)")
    b.add_argument("--recipe", default="preset",
                   help="quantize while loading: q8_0, q4_0, ... or 'none' (default: the preset's)")
    b.add_argument("--tokens", type=int_arg(lo=2), default=8, help="tokens decoded after the first (default 8)")
    b.add_argument("--skip-finite-check", action="store_true", help="load without the NaN/inf scan")
    b.set_defaults(func=run_big)

    for q in (m, k, d, s, b):
        q.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _progress(args):
    """Progress lines on stderr (stdout stays clean for --json)."""
    def step(msg):
        print(f"bench {args.bench}: {msg}", file=sys.stderr, flush=True)
    return step


def _emit(args, result: dict, report) -> int:
    if args.json:
        print(json.dumps(result, indent=2, default=float))
    else:
        print(report(result))
    return 0


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def run_machine(args) -> int:
    from minimoe.bench.machine import cache_path, machine_peaks

    def report(r):
        return (f"{r['cpu']}, {r['cores']} cores ({r['blas']}, {r['blas_core']})\n"
                f"  copy bandwidth   {r['copy_gbs']:7.1f} GB/s (read + write, {r['numba_threads']} threads)\n"
                f"  read bandwidth   {r['read_gbs']:7.1f} GB/s ({r['array_mib']:.0f} MiB array)\n"
                f"  read by working-set size (the cache curve):\n"
                + "".join(f"    {k:>6} MiB   {v:7.1f} GB/s\n" for k, v in r["read_gbs_by_mib"].items()) +
                f"  fp32 matmul      {r['sgemm_gflops']:7.1f} GFLOP/s (BLAS, {r['sgemm_size']}^3)\n"
                f"  measured {r['measured_at']}, cached in {cache_path()}")
    return _emit(args, machine_peaks(refresh=args.refresh, quick=args.quick), report)


def run_kernels(args) -> int:
    from minimoe.bench import kernels
    from minimoe.quant import format_module
    formats = [format_module(f).NAME for f in _list(args.formats)]
    bad = [f for f in formats if f not in kernels.FORMATS]
    if bad:
        raise MinimoeError(f"bench kernels: no fused kernel for {', '.join(bad)}; choose from "
                           f"{', '.join(kernels.FORMATS)}")
    if args.rows <= 0 or args.cols <= 0 or args.cols % 32 or args.batch <= 0:
        raise MinimoeError(f"bench kernels: need positive --rows and --batch and --cols a multiple of 32, "
                           f"found {args.rows}, {args.batch} and {args.cols}")
    r = kernels.run(args.rows, args.cols, args.batch, formats, twins=not args.no_twins,
                    compile_times=not args.no_compile, repeat=args.repeat, progress=_progress(args))
    return _emit(args, r, kernels.format_report)


def run_decode(args) -> int:
    from minimoe.bench import decode
    r = decode.run(args.preset, _list(args.recipes), _list(args.backends), args.prompt_tokens,
                   args.new_tokens, args.numpy_new_tokens, args.seed, progress=_progress(args),
                   quick_peaks=args.quick_peaks)
    return _emit(args, r, decode.format_report)


def run_scaling(args) -> int:
    from minimoe.bench import scaling
    try:
        experts = [int(e) for e in _list(args.experts)]
    except ValueError:
        raise MinimoeError(f"bench moe-scaling: --experts must be integers, found {args.experts!r}") from None
    r = scaling.run(_list(args.models), experts, args.recipe, args.prompt_tokens, args.new_tokens,
                    progress=_progress(args))
    if args.plot:
        r["plot"] = scaling.plot(r, args.plot)
    return _emit(args, r, scaling.format_report)


def run_load(args) -> int:
    from minimoe.bench.load import COMPETITORS, bench_load, format_load
    competitors = _list(args.competitors)
    bad = [c for c in competitors if c not in COMPETITORS]
    if bad or not competitors:
        raise MinimoeError(f"--competitors takes {', '.join(COMPETITORS)}, found {args.competitors!r}")
    if args.calls < 1:
        raise MinimoeError(f"--calls must be >= 1, found {args.calls}")
    if args.rounds < 1:
        raise MinimoeError(f"--rounds must be >= 1, found {args.rounds}")
    report = bench_load(_list(args.presets), competitors, args.calls, args.rounds)
    return _emit(args, report, format_load)


def run_big(args) -> int:
    from minimoe.bench import big
    recipe = None if args.recipe.lower() == "none" else args.recipe
    r = big.run(args.preset, args.dir, recipe, args.tokens, check_finite=not args.skip_finite_check,
                progress=_progress(args))
    return _emit(args, r, big.format_report)
