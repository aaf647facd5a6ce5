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
    p.add_argument("--chat", action="store_true", help="treat --prompt as a user message and apply the "
                   "model's chat template (harmony for gpt-oss, ChatML, Llama 3, Mistral, DeepSeek); "
                   "print the reply up to the end of the turn")
    p.add_argument("--system", metavar="TEXT", help="with --chat: a system message before the prompt")
    p.add_argument("--recipe", metavar="NAME", default=None,
                   help="pack the weights first with this quantization recipe (q4_0, mxfp4, q4_0-moe, ...; "
                        "see `minimoe quantize --help`), so generation runs the packed kernels")
    p.add_argument("--max-new-tokens", type=int_arg(lo=0), default=100)
    p.add_argument("--temperature", type=float_arg(lo=0), default=0.8, help="0 is greedy decoding")
    p.add_argument("--top-k", type=int_arg(lo=1), default=None, help="sample from the k most likely tokens")
    p.add_argument("--top-p", type=float_arg(lo=0, hi=1, lo_open=True), default=None,
                   help="sample from the smallest set of tokens whose probability reaches p")
    p.set_defaults(func=run)


def run(args) -> int:
    model = open_model(args)
    if args.recipe not in (None, "fp32"):
        import minimoe
        model = minimoe.quantize(model, args.recipe)
    tok = model.tokenizer
    hf = getattr(tok, "kind", None) == "hf"
    if args.chat and not hf:
        raise MinimoeError(f"--chat needs a Hugging Face tokenizer with a chat template; "
                           f"{args.model or args.preset} has {'no tokenizer' if tok is None else 'a ' + tok.kind + ' tokenizer'}")
    if args.system and not args.chat:
        raise MinimoeError("--system needs --chat")
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
    elif args.chat:
        from minimoe.hf_tokenizer.chat import apply_chat_template
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
            [{"role": "user", "content": args.prompt}]
        ids = tok.encode(apply_chat_template(tok, messages), add_special_tokens=False)  # holds its own BOS
    else:
        ids = tok.encode(args.prompt or "\n")
        if len(ids) == 0:
            raise MinimoeError("the prompt encodes to no tokens")
    out = model.generate(ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, seed=args.seed)
    if tok is None:
        print(",".join(str(int(i)) for i in out))
    elif args.chat:
        sys.stdout.write(reply(tok, out[len(ids):]) + "\n")
    else:
        sys.stdout.write((tok.decode(out, skip_special_tokens=True) if hf else tok.decode(out)) + "\n")
    return 0


def reply(tok, new_ids) -> str:
    """The generated ids up to and including the first end-of-turn token, as text with the special
    tokens shown (gpt-oss's reply has an analysis and a final channel)."""
    from minimoe.hf_tokenizer.chat import END_OF_TURN, recognize
    stops = {tok.token_to_id(t) for t in END_OF_TURN.get(recognize(tok.chat_template), ())} - {None}
    new_ids = [int(i) for i in new_ids]
    for k, i in enumerate(new_ids):
        if i in stops:
            new_ids = new_ids[:k + 1]
            break
    return tok.decode(new_ids)
