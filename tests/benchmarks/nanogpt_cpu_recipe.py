"""The speed reference for `minimoe train --preset shakespeare-dense`: nanoGPT's CPU recipe for
character-level Shakespeare, rebuilt in PyTorch, timed on the same machine.

Needs torch (not a minimoe dependency; CI does not run this). It is written from nanoGPT's
README and its model (GPT-2 style: learned positions, LayerNorm without bias, GELU MLP of width
4C, tied output head, causal scaled_dot_product_attention), with the README's CPU settings:

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
        --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
        --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

i.e. lr 1e-3 -> 1e-4 (cosine), warmup 100, AdamW betas (0.9, 0.99), weight decay 0.1 on the
matrices and embeddings, grad clip 1.0, eval every 250 iterations over 20 batches per split.

    python tests/benchmarks/nanogpt_cpu_recipe.py --data ../shared/data/tinyshakespeare.txt [--iters 2000]

It prints ms per iteration (training steps only, as nanoGPT's per-iteration dt without the
evaluations), tokens/s, the wall time and the final losses, in the same JSON shape as minimoe's
metrics.json, so the two can be compared side by side.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, C: int, H: int):
        super().__init__()
        self.H = H
        self.ln_1 = nn.LayerNorm(C, bias=False)
        self.c_attn = nn.Linear(C, 3 * C, bias=False)
        self.c_proj = nn.Linear(C, C, bias=False)
        self.ln_2 = nn.LayerNorm(C, bias=False)
        self.c_fc = nn.Linear(C, 4 * C, bias=False)
        self.mlp_proj = nn.Linear(4 * C, C, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)                    # (B, T, C) each
        q, k, v = (a.view(B, T, self.H, C // self.H).transpose(1, 2) for a in (q, k, v))  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)           # (B, H, T, D)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, V: int, T: int, C: int = 128, L: int = 4, H: int = 4):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.blocks = nn.ModuleList([Block(C, H) for _ in range(L)])
        self.ln_f = nn.LayerNorm(C, bias=False)
        self.lm_head = nn.Linear(C, V, bias=False)
        self.wte.weight = self.lm_head.weight                                  # tied
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * L) if name.endswith(("c_proj.weight", "mlp_proj.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def get_lr(it, lr=1e-3, min_lr=1e-4, warmup=100, decay_iters=2000):
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay_iters:
        return min_lr
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * (it - warmup) / (decay_iters - warmup))) * (lr - min_lr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-interval", type=int, default=250)
    ap.add_argument("--eval-iters", type=int, default=20)
    ap.add_argument("--out", help="write the metrics here as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1337)
    text = open(args.data, encoding="utf-8").read()
    chars = sorted(set(text))
    ids = torch.tensor(np.searchsorted(np.array([ord(c) for c in chars]),
                                       np.frombuffer(text.encode("utf-32-le"), np.uint32)), dtype=torch.long)
    n = int(0.9 * len(ids))
    splits = {"train": ids[:n], "val": ids[n:]}
    B, T = 12, 64

    def batch(split):
        data = splits[split]
        ix = torch.randint(len(data) - T, (B,))
        return torch.stack([data[i:i + T] for i in ix]), torch.stack([data[i + 1:i + 1 + T] for i in ix])

    model = GPT(len(chars), T)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))

    @torch.no_grad()
    def estimate():
        model.eval()
        out = {s: float(np.mean([model(*batch(s)).item() for _ in range(args.eval_iters)])) for s in splits}
        model.train()
        return out

    history, train_s, t_start = [], 0.0, time.perf_counter()
    for it in range(args.iters + 1):
        if it % args.eval_interval == 0 or it == args.iters:
            history.append({"iter": it, **{f"{k}_loss": v for k, v in estimate().items()}})
            print(f"step {it}: train loss {history[-1]['train_loss']:.4f}, val loss {history[-1]['val_loss']:.4f}",
                  flush=True)
        if it == args.iters:
            break
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = get_lr(it, decay_iters=args.iters)
        loss = model(*batch("train"))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        train_s += time.perf_counter() - t0
    m = {"reference": "nanoGPT CPU recipe (PyTorch eager)", "torch": torch.__version__, "threads": args.threads,
         "iters": args.iters, "train_loss": history[-1]["train_loss"], "val_loss": history[-1]["val_loss"],
         "ms_per_iter": round(1e3 * train_s / args.iters, 3),
         "tokens_per_s": round(B * T * args.iters / train_s, 1), "train_s": round(train_s, 3),
         "wall_s": round(time.perf_counter() - t_start, 3),
         "params": sum(p.numel() for p in model.parameters()), "history": history}
    print(json.dumps({k: v for k, v in m.items() if k != "history"}, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(m, f, indent=1)


if __name__ == "__main__":
    main()
