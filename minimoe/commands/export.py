"""`minimoe export`: write a model for another engine (docs/export.md).

    minimoe export --to gguf --model ckpt --out model.gguf --recipe q4_0
    minimoe export --to hf   --model ckpt --out hf_folder
"""
from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("export", help="write a model for transformers (--to hf) or llama.cpp (--to gguf)",
                       description="Write a minimoe checkpoint, a Hugging Face folder or a .gguf file for "
                                   "another engine. --to hf writes a transformers folder (mixtral, qwen3_moe "
                                   "or olmoe, from the config's options) with its tokenizer; --to gguf writes "
                                   "a llama.cpp file (llama, qwen3moe, olmoe or gpt-oss architecture). See docs/export.md.")
    p.add_argument("--to", choices=["hf", "gguf"], required=True, help="target format")
    p.add_argument("--model", metavar="DIR", required=True, help="the checkpoint folder (or .gguf) to read")
    p.add_argument("--out", metavar="PATH", required=True, help="the file to write")
    p.add_argument("--recipe", default="f32", choices=["f32", "q8_0", "q4_0", "mxfp4", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"],
                   help="--to gguf: how the matrices are packed (default f32)")
    p.set_defaults(func=run)


def run(args) -> int:
    import os

    import numpy as np

    import minimoe
    model = minimoe.load(args.model, dtype=np.float32)   # (bf16 storage is written as the recipe says)
    if args.to == "hf":
        family = model.save_hf(args.out)
        print(f"wrote {args.out} (model_type {family})")
        return 0
    path = model.save_gguf(args.out, recipe=args.recipe)
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.2f} MiB, recipe {args.recipe})")
    return 0
