"""`minimoe generate`: continue a prompt with a model."""
from __future__ import annotations

import sys

import numpy as np

from minimoe.commands.common import add_model_args, float_arg, int_arg, open_model
from minimoe.errors import MinimoeError


def add_parser(sub):
    p = sub.add_parser("generate", help="continue a prompt with a model",
                       description="Continue a prompt. With --preset, the weights are random: "
                                   "expect gibberish, but every layer runs.")
    add_model_args(p)
    p.add_argument("--prompt", default="", help="the text to continue")
    p.add_argument("--prompt-ids", metavar="IDS", help="comma-separated token ids instead of text "
                   "(for models without a tokenizer)")
    p.add_argument("--max-new-tokens", type=int_arg(lo=0), default=100)
    p.add_argument("--temperature", type=float_arg(lo=0), default=0.8, help="0 is greedy decoding")
    p.add_argument("--top-k", type=int_arg(lo=1), default=None, help="sample from the k most likely tokens")
    p.add_argument("--top-p", type=float_arg(lo=0, hi=1, lo_open=True), default=None,
                   help="sample from the smallest set of tokens whose probability reaches p")
    p.set_defaults(func=run)


def run(args) -> int:
    model = open_model(args)
    tok = model.tokenizer
    if args.prompt_ids:
        try:
            ids = [int(s) for s in args.prompt_ids.split(",")]
        except ValueError:
            raise MinimoeError(f"--prompt-ids must be comma-separated integers, found {args.prompt_ids!r}") from None
        V = model.config.vocab_size
        bad = [i for i in ids if not 0 <= i < V]
        if bad:
            raise MinimoeError(f"--prompt-ids: token id {bad[0]} is outside the model's vocabulary 0..{V - 1}")
        ids = np.array(ids, dtype=np.int64)
    elif tok is None:
        raise MinimoeError(f"{args.model}: this model has no tokenizer.json; pass --prompt-ids")
    else:
        ids = tok.encode(args.prompt or "\n")
        if len(ids) == 0:
            raise MinimoeError("the prompt encodes to no tokens")
    out = model.generate(ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, seed=args.seed)
    if tok is None:
        print(",".join(str(int(i)) for i in out))
    else:
        sys.stdout.write(tok.decode(out) + "\n")
    return 0
