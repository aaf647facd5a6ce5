"""`minimoe eval`: a model's validation loss and perplexity on a text file.

    minimoe eval --model runs/moe --data tinyshakespeare.txt
    minimoe eval --model runs/moe-q4_0 --data tinyshakespeare.txt --split all --json

The text is tokenized with the tokenizer stored in the model's checkpoint and split as
`minimoe train` splits it (minimoe/train/data.py): the val split is the last 10% of the tokens.
See minimoe/evaluate.py for exactly which windows count.
"""
from __future__ import annotations

import json

from minimoe.commands.common import add_model_args, int_arg, open_model


def add_parser(sub):
    p = sub.add_parser("eval", help="validation loss and perplexity of a model on a text file")
    add_model_args(p)
    p.add_argument("--data", metavar="PATH", required=True,
                   help="a UTF-8 text file, 'shakespeare' or 'pydoc' (as for `minimoe train`)")
    p.add_argument("--split", choices=("val", "train", "all"), default="val",
                   help="which part of the text: the last 10%% (val, default), the first 90%%, or all")
    p.add_argument("--block-size", type=int_arg(lo=1), metavar="T", help="window length (default: max_seq_len)")
    p.add_argument("--batch-size", type=int_arg(lo=1), default=8, metavar="B", help="windows per forward pass")
    p.add_argument("--max-tokens", type=int_arg(lo=1), metavar="N", help="evaluate only the first N tokens")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from minimoe.evaluate import eval_tokens, evaluate
    model = open_model(args)
    tokens = eval_tokens(model, args.data, args.split)
    r = evaluate(model, tokens, block_size=args.block_size, batch_size=args.batch_size,
                 max_tokens=args.max_tokens)
    r.update(split=args.split, data=str(args.data))
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{args.split} loss {r['loss']:.4f}  perplexity {r['perplexity']:.3f}  "
              f"({r['n_tokens']:,} tokens predicted, windows of {r['block_size']})")
    return 0
