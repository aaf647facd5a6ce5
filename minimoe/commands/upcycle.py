"""`minimoe upcycle`: copy a trained dense model's FFNs into experts (sparse upcycling).

    minimoe upcycle --model runs/dense --experts 8 --top-k 2 --out runs/upcycled
    minimoe train --init runs/upcycled --data shakespeare --max-iters 500

See minimoe/upcycle.py for what is copied, and why the new model starts exactly where the dense
one ended.
"""
from __future__ import annotations

from minimoe.errors import MinimoeError


def add_parser(sub):
    p = sub.add_parser("upcycle", help="turn a trained dense model into an MoE whose experts are copies "
                                       "of its FFNs (sparse upcycling)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--model", metavar="DIR", required=True, help="the dense minimoe checkpoint")
    p.add_argument("--experts", type=int, required=True, help="E, experts per layer")
    p.add_argument("--top-k", type=int, required=True, help="K, experts per token")
    p.add_argument("--out", metavar="DIR", required=True, help="write the MoE checkpoint here")
    p.add_argument("--router-std", type=float, default=0.02, help="std of the fresh router weights")
    p.add_argument("--expert-noise", type=float, default=0.0,
                   help="relative noise on each expert copy (0: exact copies, the output is unchanged)")
    p.add_argument("--seed", type=int, default=0, help="seed of the router (and noise) initialisation")
    p.add_argument("--set", metavar="FIELD=VALUE", action="append", default=[],
                   help="another Config field of the MoE, e.g. --set capacity_factor=1.25")
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    import minimoe
    from minimoe.commands.train import parse_sets
    from minimoe.upcycle import upcycle
    if args.experts < 1 or not 1 <= args.top_k <= args.experts:
        raise MinimoeError(f"need --experts >= 1 and 1 <= --top-k <= --experts, found {args.experts} "
                           f"and {args.top_k}")
    dense = minimoe.load(args.model, dtype=np.float32)   # copied into float32 experts
    moe = upcycle(dense, args.experts, args.top_k, router_std=args.router_std,
                  expert_noise=args.expert_noise, seed=args.seed, **parse_sets(args.set))
    moe.save(args.out)
    d, m = dense.param_counts(), moe.param_counts()
    print(f"upcycled {args.model}: {d['total']:,} parameters -> {m['total']:,} ({args.experts} experts of "
          f"width {moe.config.d_expert}, top-{args.top_k}; {m['active']:,} active per token, was "
          f"{d['active']:,})")
    print(f"wrote {args.out}   (continue training: minimoe train --init {args.out} --data ...)")
    return 0
