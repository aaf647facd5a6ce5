"""`minimoe train`: train a model from scratch (or resume a run) on a text corpus.

With no arguments it trains the shakespeare-moe preset on the embedded corpus (Python's
reference documentation) for a couple of minutes, then prints a sample and the expert usage.
"""
from __future__ import annotations

import dataclasses
import json

from minimoe.errors import MinimoeError

# CLI flag -> TrainConfig field, for the settings that are plain values
FLAGS = {
    "max_iters": (int, "iterations (optimizer steps) to train to"),
    "batch_size": (int, "sequences per micro-batch (B)"),
    "block_size": (int, "tokens per sequence (T); default: the preset's max_seq_len"),
    "grad_accum": (int, "micro-batches per optimizer step"),
    "lr": (float, "peak learning rate"),
    "min_lr": (float, "learning rate at the end of the cosine decay"),
    "warmup_iters": (int, "linear warmup steps"),
    "lr_decay_iters": (int, "step where the cosine reaches min_lr (default: max_iters)"),
    "weight_decay": (float, "AdamW decoupled weight decay (matrices only)"),
    "beta1": (float, "AdamW beta1"),
    "beta2": (float, "AdamW beta2"),
    "grad_clip": (float, "clip the global gradient norm to this (0: off)"),
    "aux_loss_coef": (float, "load-balancing loss coefficient (0: off)"),
    "aux_loss_form": (str, "'layers' (sum of per-layer losses), 'hf' (transformers' concatenated form) "
                           "or 'sequence' (DeepSeek-V3's per-sequence form)"),
    "z_loss_coef": (float, "router z-loss coefficient (0: off)"),
    "bias_update_rate": (float, "loss-free balancing (DeepSeek-V3): move each expert's selection bias by "
                                "this much per step against its load error (0: off)"),
    "eval_interval": (int, "evaluate every N steps (0: only at the end)"),
    "eval_iters": (int, "batches per split per evaluation"),
    "ckpt_interval": (int, "checkpoint every N steps (always at the end; 0: only at the end)"),
    "val_fraction": (float, "fraction of the text held out for validation (the end of it)"),
    "threads": (int, "split each batch into N shards, one thread each (default: one per core, up to 2)"),
    "sample_tokens": (int, "tokens to sample at the end"),
    "sample_temperature": (float, "sampling temperature of the final sample"),
}


def add_parser(sub):
    p = sub.add_parser("train", help="train a model from scratch, or resume a run",
                       description="Train a model from scratch (or resume a run) on a text corpus. With no "
                                   "arguments: the shakespeare-moe preset on the embedded corpus (Python's "
                                   "reference documentation), 2000 steps, then a sample and the expert usage. "
                                   "See docs/training.md.")
    p.add_argument("--preset", help="model preset (default shakespeare-moe); see `minimoe info --preset`")
    p.add_argument("--data", metavar="PATH",
                   help="a UTF-8 text file, 'shakespeare' (after `minimoe data shakespeare`), or 'pydoc' "
                        "(the default: Python's reference documentation)")
    p.add_argument("--tokenizer", choices=["char", "byte"], help="character- or byte-level (default char)")
    p.add_argument("--out", metavar="DIR", help="run folder (default runs/<preset>)")
    p.add_argument("--seed", type=int, help="seed of initialisation, batches and the sample (default 1337)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its latest checkpoint")
    p.add_argument("--init", metavar="DIR", help="start a new run from the model in DIR (e.g. `minimoe "
                   "upcycle`'s output) instead of random weights; --set may change routing options")
    p.add_argument("--set", metavar="FIELD=VALUE", action="append", default=[],
                   help="override a model Config field, e.g. --set n_experts=4 --set top_k=1")
    p.add_argument("--decay-embeddings", action="store_true", default=None,
                   help="also apply weight decay to the token embedding")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines (metrics.json still written)")
    for name, (typ, help_) in FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=typ, help=help_)
    p.set_defaults(func=run)


def parse_sets(items: list[str]) -> dict:
    """["n_experts=4", "name=x"] -> {"n_experts": 4, "name": "x"}: each value is read as JSON if it
    is JSON, else as a string; each field must be one of Config's (its value is checked with it)."""
    from minimoe.config import Config, suggest_field
    known = {f.name for f in dataclasses.fields(Config)}
    out = {}
    for item in items:
        if "=" not in item:
            raise MinimoeError(f"--set expects FIELD=VALUE, found {item!r}")
        key, value = (part.strip() for part in item.split("=", 1))
        if key not in known:
            raise MinimoeError(f"--set {item}: {key!r} is not a model Config field{suggest_field(key)}")
        try:
            out[key] = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            out[key] = value
    return out


def run(args) -> int:
    from minimoe.train.loop import TrainConfig, Trainer
    given = {name: getattr(args, name) for name in FLAGS if getattr(args, name) is not None}
    for name in ("preset", "data", "tokenizer", "out", "seed", "decay_embeddings", "init"):
        if getattr(args, name) is not None:
            given[name] = getattr(args, name)
    if args.set:
        given["model"] = parse_sets(args.set)
    verbose = not args.quiet
    if args.init and args.preset:
        raise MinimoeError("--init DIR starts from that model; leave out --preset")
    if args.resume:                      # flags that repeat the run's own settings are fine; others
        trainer = Trainer.resume(args.resume, verbose=verbose, **given)   # that would change its model are refused
    else:
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        trainer = Trainer.new(TrainConfig(**{k: v for k, v in given.items() if k in known}), verbose=verbose)
    trainer.run()
    return 0
