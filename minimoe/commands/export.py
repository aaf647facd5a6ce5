"""`minimoe export`: write a model for another engine (docs/export.md).

    minimoe export --to gguf --model ckpt --out model.gguf --recipe q4_0
"""
from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("export", help="write a model as a GGUF file for llama.cpp",
                       description="Write a minimoe checkpoint (or a loaded HF folder) for another engine. "
                                   "--to gguf writes llama.cpp's 'llama' architecture with experts. "
                                   "(--to hf is not implemented yet.)")
    p.add_argument("--to", choices=["gguf"], required=True, help="target format")
    p.add_argument("--model", metavar="DIR", required=True, help="the checkpoint folder (or .gguf) to read")
    p.add_argument("--out", metavar="PATH", required=True, help="the file to write")
    p.add_argument("--recipe", default="f32", choices=["f32", "q8_0", "q4_0", "mxfp4"],
                   help="how the matrices are packed (default f32)")
    p.set_defaults(func=run)


def run(args) -> int:
    import os

    import minimoe
    model = minimoe.load(args.model)
    path = model.save_gguf(args.out, recipe=args.recipe)
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.2f} MiB, recipe {args.recipe})")
    return 0
