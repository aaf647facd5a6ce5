"""`minimoe info`: what a model is made of."""
from __future__ import annotations

import os

from minimoe.commands.common import add_model_args, open_model


def add_parser(sub):
    p = sub.add_parser("info", help="print a model's config, parameter counts and bytes by dtype")
    add_model_args(p)
    p.set_defaults(func=run)


def report(model, folder: str | None = None) -> str:
    cfg, counts = model.config, model.param_counts()
    lines = [f"model: {folder or cfg.name or 'custom'}", "", "config:"]
    for k, v in cfg.to_dict().items():
        lines.append(f"  {k:<20} {v}")
    lines += ["", "parameters:",
              f"  total                {counts['total']:>15,}",
              f"  active per token     {counts['active']:>15,}   "
              f"({100 * counts['active'] / counts['total']:.1f}% of total)",
              f"  embedding            {counts['embedding']:>15,}",
              f"  active non-embedding {counts['active_non_embedding']:>15,}", "",
              f"  {'component':<16}{'total':>15}{'active':>15}"]
    for c, n in counts["by_component"].items():
        if n:
            lines.append(f"  {c:<16}{n:>15,}{counts['active_by_component'][c]:>15,}")
    mem: dict[str, int] = {}
    for arr in model.params.values():
        key = f"packed {arr.fmt}" if hasattr(arr, "fmt") else str(arr.dtype)
        mem[key] = mem.get(key, 0) + int(arr.nbytes)
    lines += ["", "bytes in memory by dtype:"]
    lines += [f"  {k:<16}{v:>15,}" for k, v in mem.items()]
    if folder and os.path.isdir(folder):
        from minimoe.io.checkpoint import tensor_dtypes
        lines += ["", "bytes on disk by dtype:"]
        lines += [f"  {k:<16}{v:>15,}" for k, v in tensor_dtypes(folder).items()]
    return "\n".join(lines)


def run(args) -> int:
    print(report(open_model(args, tokenizer=False), args.model))
    return 0
