"""Pieces the subcommands share: opening a model from --model or --preset, and checked flag types."""
from __future__ import annotations

import argparse
import math

from minimoe.checks import _range
from minimoe.errors import MinimoeError


def int_arg(lo: int | None = None, hi: int | None = None):
    """An argparse type: an integer in lo..hi. Anything else is a usage error naming the flag."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"expected an integer{_range(lo, hi)}, found {text!r}")
        return v
    parse.__name__ = "integer"
    return parse


def float_arg(lo: float | None = None, hi: float | None = None, lo_open: bool = False):
    """An argparse type: a finite number with lo <= v (lo < v if lo_open) <= hi."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if (not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo))
                or (hi is not None and v > hi)):
            raise argparse.ArgumentTypeError(f"expected a finite number{_range(lo, hi, lo_open)}, found {text!r}")
        return v
    parse.__name__ = "number"
    return parse


def add_model_args(p, preset_help="a preset to initialise fresh (random) weights from"):
    p.add_argument("--model", metavar="DIR", help="a minimoe checkpoint or Hugging Face model folder")
    p.add_argument("--preset", metavar="NAME", help=preset_help)
    p.add_argument("--seed", type=int_arg(lo=0), default=0, help="random seed (initialisation and sampling)")
    p.add_argument("--skip-finite-check", action="store_true",
                   help="with --model: do not scan the weights for NaN/inf while loading (faster)")


def open_model(args, tokenizer: bool = True):
    """The model named by --model DIR, or a fresh one from --preset NAME. A fresh model gets a
    byte tokenizer (its vocabulary raised to the 257 ids that needs) unless tokenizer=False, which
    keeps the preset exactly as defined (for `info`)."""
    import minimoe
    from minimoe.tokenizer import ByteTokenizer
    if args.model and args.preset:
        raise MinimoeError("give either --model DIR or --preset NAME, not both")
    if args.model:
        return minimoe.load(args.model, check_finite=not getattr(args, "skip_finite_check", False))
    if args.preset:
        cfg = minimoe.Config.preset(args.preset)
        if not tokenizer:
            return minimoe.Model(cfg, seed=args.seed)
        tok = ByteTokenizer()
        cfg = cfg.replace(vocab_size=max(cfg.vocab_size, tok.vocab_size))
        return minimoe.Model(cfg, seed=args.seed, tokenizer=tok)
    raise MinimoeError("give --model DIR (a checkpoint) or --preset NAME (fresh random weights)")
