"""Validation loss and perplexity of a model on text, the number `minimoe eval` prints.

Shape legend: B batch (windows per forward pass), T time (window length), V vocab,
N tokens in the split.

    val = eval_tokens(model, "tinyshakespeare.txt")          # (N,) the last 10%, model's tokenizer
    result = evaluate(model, val)                           # {"loss", "perplexity", "n_tokens", ...}

`evaluate` is deterministic: it cuts the split into consecutive windows of T+1 tokens that
overlap by one, so every token after the first is predicted exactly once, from the tokens
before it in its window (at most T of them, as in training):

    val    t0 t1 t2 ... tT | tT+1 ... t2T | ...
    window 0: inputs t0..tT-1, targets t1..tT          window 1: inputs tT..t2T-1, targets tT+1..t2T

loss = mean over those N-1 targets of -log p(target), in nats; perplexity = exp(loss).
Two models evaluated on the same split see exactly the same windows, so their losses compare
directly (the quantization report relies on this). The training loop's periodic val loss
(minimoe/train/loop.py) averages `eval_iters` random batches instead, so it differs slightly.
"""
from __future__ import annotations

import math
import os

import numpy as np

from minimoe.checks import check_int
from minimoe.errors import DataError, MinimoeError

SPLITS = ("val", "train", "all")


def eval_tokens(model, source, split: str = "val", val_fraction: float = 0.1) -> np.ndarray:
    """Token ids (N,) of one split of `source`, tokenized with the model's own tokenizer.

    `source` is what `minimoe train --data` takes: a text file, "pydoc" or "shakespeare". The text
    is read, encoded and split by minimoe.train.data.build_dataset, exactly as for training: the
    first 1 - val_fraction of the ids are "train", the rest "val" (nanoGPT's split).
    """
    from minimoe.train.data import build_dataset
    if split not in SPLITS:
        raise MinimoeError(f"split must be one of {list(SPLITS)}, found {split!r}")
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise MinimoeError("this model has no tokenizer (no tokenizer.json in its checkpoint); "
                           "evaluation must use the tokenizer the model was trained with")
    try:
        data = build_dataset(os.fspath(source), tok, block_size=1, val_fraction=val_fraction)
    except DataError as e:
        if os.fspath(source) in str(e):
            raise
        raise DataError(f"{os.fspath(source)}: {e} (the model's {tok.kind} tokenizer)") from None
    if split == "all":
        return np.concatenate([data.train, data.val])
    return data.val if split == "val" else data.train


def evaluate(model, tokens, block_size: int | None = None, batch_size: int = 8,
             max_tokens: int | None = None) -> dict:
    """Mean next-token cross-entropy of `model` over `tokens` (N,), as described at the top.

    block_size  T, the window length (default: the model's max_seq_len)
    batch_size  B, windows per forward pass (only changes speed and memory, not the result)
    max_tokens  predict only the first max_tokens targets (a quick estimate); default: all
    Returns {"loss", "perplexity", "n_tokens" (targets counted), "block_size"}.
    """
    L = model.config.max_seq_len
    T = check_int("block_size", L if block_size is None else block_size, lo=1, hi=L,
                  hint=" (the model's max_seq_len is the most)")
    batch_size = check_int("batch_size", batch_size, lo=1)
    max_tokens = check_int("max_tokens", max_tokens, lo=1, none_ok=True)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or (tokens.size and not np.issubdtype(tokens.dtype, np.integer)):
        raise MinimoeError(f"tokens must be a 1-D array of integer ids, found {tokens.dtype} {tokens.shape}")
    tokens = tokens.astype(np.int64)
    if max_tokens is not None:
        tokens = tokens[: max_tokens + 1]
    if len(tokens) < 2:
        raise DataError(f"need at least 2 tokens to predict one, found {len(tokens)}")
    n_targets = len(tokens) - 1
    n_full = n_targets // T
    starts = np.arange(n_full) * T                                   # window starts, (n_full,)
    total = 0.0                                                      # sum of -log p, in float64
    for b in range(0, n_full, batch_size):
        s = starts[b: b + batch_size]                                # (B,)
        idx = s[:, None] + np.arange(T + 1)                          # (B, T+1)
        window = tokens[idx]                                         # (B, T+1)
        total += _nll_sum(model, window[:, :-1], window[:, 1:])
    rest = n_targets - n_full * T                                    # a last, shorter window
    if rest:
        window = tokens[n_full * T:][None]                           # (1, rest+1)
        total += _nll_sum(model, window[:, :-1], window[:, 1:])
    loss = total / n_targets
    return {"loss": loss, "perplexity": math.exp(loss), "n_tokens": n_targets, "block_size": T}


def _nll_sum(model, inputs: np.ndarray, targets: np.ndarray) -> float:
    """Sum over positions of -log softmax(logits)[target]: inputs, targets (B, T)."""
    logits = model(inputs).astype(np.float64)                        # (B, T, V)
    m = logits.max(axis=-1, keepdims=True)                           # (B, T, 1)
    lse = m[..., 0] + np.log(np.exp(logits - m).sum(axis=-1))        # (B, T) logsumexp
    picked = np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]   # (B, T)
    return float((lse - picked).sum())
