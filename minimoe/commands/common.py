"""Pieces the subcommands share: opening a model from --model or --preset."""
from __future__ import annotations

from minimoe.errors import MinimoeError


def add_model_args(p, preset_help="a preset to initialise fresh (random) weights from"):
    p.add_argument("--model", metavar="DIR", help="a minimoe checkpoint or Hugging Face model folder")
    p.add_argument("--preset", metavar="NAME", help=preset_help)
    p.add_argument("--seed", type=int, default=0, help="random seed (initialisation and sampling)")


def open_model(args, tokenizer: bool = True):
    """The model named by --model DIR, or a fresh one from --preset NAME. A fresh model gets a
    byte tokenizer (its vocabulary raised to the 257 ids that needs) unless tokenizer=False, which
    keeps the preset exactly as defined (for `info`)."""
    import minimoe
    from minimoe.tokenizer import ByteTokenizer
    if args.model and args.preset:
        raise MinimoeError("give either --model DIR or --preset NAME, not both")
    if args.model:
        return minimoe.load(args.model)
    if args.preset:
        cfg = minimoe.Config.preset(args.preset)
        if not tokenizer:
            return minimoe.Model(cfg, seed=args.seed)
        tok = ByteTokenizer()
        cfg = cfg.replace(vocab_size=max(cfg.vocab_size, tok.vocab_size))
        return minimoe.Model(cfg, seed=args.seed, tokenizer=tok)
    raise MinimoeError("give --model DIR (a checkpoint) or --preset NAME (fresh random weights)")
