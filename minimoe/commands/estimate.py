"""`minimoe estimate`: will a model run on my machine? Parameters, memory, KV cache, FLOPs, speed bound.

    minimoe estimate gpt-oss-120b --recipe experts-mxfp4 --hardware h100
    minimoe estimate --config path/to/config.json --dtype q4_0 --context 32768 --json
    minimoe estimate --compare                     # every preset, then each lab's figures beside ours
    minimoe estimate glm-4.5 --with-mtp            # count the MTP layer the checkpoint stores
    minimoe estimate gpt-oss-120b --plot memory.png
    minimoe estimate mixtral-8x7b --dtype q4_0 --batch 32 --hardware h100   # distinct experts per step
    minimoe estimate gpt-oss-120b --recipe experts-mxfp4 --offload-experts --hardware rtx-4090 --host ddr5-desktop
"""
from __future__ import annotations

import json

from minimoe.errors import MinimoeError


def add_parser(sub):
    from minimoe.commands.common import float_arg, int_arg
    from minimoe.inspect.estimate import DEFAULT_CONTEXT, FORMATS, RECIPES
    from minimoe.inspect.hardware import HARDWARE
    p = sub.add_parser("estimate", help="parameters, memory, KV cache, FLOPs and hardware verdicts "
                                        "for a preset, a config.json or a checkpoint")
    p.add_argument("name", nargs="?", metavar="NAME",
                   help="a preset (e.g. gpt-oss-120b), a config.json, or a checkpoint folder")
    p.add_argument("--config", metavar="PATH", help="a Hugging Face or minimoe config.json")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--dtype", metavar="FMT",
                      help=f"one format for every weight matrix: {', '.join(FORMATS)} (int8 = q8_0); "
                           "default bf16 (a checkpoint folder's stored bytes are reported as well)")
    prec.add_argument("--recipe", metavar="NAME", help=f"a mixed recipe: {', '.join(RECIPES)}")
    p.add_argument("--context", type=int_arg(lo=1), default=DEFAULT_CONTEXT, metavar="N",
                   help=f"tokens in the KV cache (default {DEFAULT_CONTEXT})")
    p.add_argument("--batch", type=int_arg(lo=1), default=1, metavar="N",
                   help="sequences in the KV cache and decoded together (default 1); the report then "
                        "counts the distinct experts a step touches, E (1 - (1 - K/E)^N)")
    p.add_argument("--offload-experts", action="store_true",
                   help="keep the routed experts in host RAM (--host) and the rest on the --hardware GPU")
    p.add_argument("--host", default="ddr5-desktop", metavar="NAME",
                   help="with --offload-experts: the host's memory, a hardware name (default ddr5-desktop)")
    p.add_argument("--link", default="pcie4-x16", metavar="NAME",
                   help="with --offload-experts: the GPU's link (pcie3-x16, pcie4-x16, pcie5-x16)")
    p.add_argument("--kv-dtype", default="bf16", metavar="FMT", help="KV cache format: fp32, bf16, fp16")
    p.add_argument("--hardware", metavar="NAME", help=f"one device: {', '.join(HARDWARE)} (default: all)")
    p.add_argument("--memory-gb", type=float_arg(lo=0, lo_open=True), metavar="GB", help="a custom device's memory")
    p.add_argument("--bandwidth-gbs", type=float_arg(lo=0, lo_open=True), metavar="GB/S", help="a custom device's bandwidth")
    p.add_argument("--with-mtp", action="store_true",
                   help="count the multi-token-prediction layers the checkpoint stores (DeepSeek-V3, "
                        "GLM-4.5) in the parameters, weights, KV cache and FLOPs")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    p.add_argument("--compare", action="store_true",
                   help="print a table of every preset, then each lab's published figures beside ours "
                        "with the convention that reproduces each")
    p.add_argument("--plot", metavar="FILE", help="draw memory per precision against each device's memory")
    p.set_defaults(func=run)


def run(args) -> int:
    from minimoe.inspect import estimate as est
    from minimoe.inspect.hardware import get_hardware
    if args.name and args.config:
        raise MinimoeError("give a NAME or --config PATH, not both")
    target = args.config or args.name
    if args.compare:
        if target:
            raise MinimoeError("--compare tabulates every preset; leave out NAME and --config")
        if args.json:
            out = {n: est.estimate(n, dtype=args.dtype, recipe=args.recipe, context=args.context,
                                   batch=args.batch, hardware="h100", with_mtp=args.with_mtp)
                   for n in est.compare_names()}
            print(json.dumps(out, indent=1))
        else:
            print(est.compare(dtype=args.dtype, recipe=args.recipe, context=args.context,
                              with_mtp=args.with_mtp))
        return 0
    if not target:
        raise MinimoeError("name a model: a preset (e.g. gpt-oss-120b), a config.json, a checkpoint "
                           "folder, or --config PATH; or use --compare")
    r = est.estimate(target, dtype=args.dtype, recipe=args.recipe, context=args.context,
                     batch=args.batch, hardware=args.hardware, memory_gb=args.memory_gb,
                     bandwidth_gbs=args.bandwidth_gbs, kv_dtype=args.kv_dtype, with_mtp=args.with_mtp,
                     offload_experts=args.offload_experts, host=args.host, link=args.link)
    if args.plot:
        devices = None
        if args.hardware or args.memory_gb or args.bandwidth_gbs:
            devices = [get_hardware(args.hardware, args.memory_gb, args.bandwidth_gbs)]
        est.plot_memory(r, args.plot, devices)
    print(json.dumps(r, indent=1) if args.json else est.report(r))
    if args.plot and not args.json:
        print(f"\nwrote {args.plot}")
    return 0
