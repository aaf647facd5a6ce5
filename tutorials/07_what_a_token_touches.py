# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 07 · What a token touches
#
# A Mixture-of-Experts model has many parameters, but each token only passes through a few of
# them. Here we watch one token go through a trained MoE with `minimoe.trace()`, which records,
# for every op the token passes through, the FLOPs it cost, the weight bytes it read (at the
# precision the weights are stored in), the activation and KV-cache bytes, and the time.
#
# We then ask three questions:
# 1. What changes when the weights are stored in 4 bits (Q4_0)? The bytes fall; the FLOPs do not.
# 2. What changes when we double the number of experts but keep top-k? The total parameters
#    double; the FLOPs and bytes per token do not.
# 3. What did the experts learn? Which kinds of characters (letters, digits, punctuation, code)
#    does the router send to which expert?
#
# Every number comes from the ops themselves: `minimoe/nn/linear.py` reports its matmul,
# `minimoe/nn/router.py` its routing, and so on (see docs/inspect.md for what is counted how).
#
# Shape legend: B batch, T time, C d_model, H heads, D head dim, F expert width, E experts,
# K top-k, V vocab.

# %%
import os

import matplotlib

matplotlib.use("Agg")
import numpy as np

import minimoe
from minimoe.inspect import plots, views

FAST = os.environ.get("MINIMOE_FAST") == "1"
OUT = os.environ.get("MINIMOE_TUTORIAL_OUT") or os.path.join(os.getcwd(), "minimoe_out")
os.makedirs(OUT, exist_ok=True)

# %% [markdown]
# ## 0. A trained MoE
# We train the `shakespeare-moe` preset (4 layers, C = 128, 8 experts of width 172, top-2) on
# Python's reference documentation, which ships with Python and mixes prose, code and numbers:
# a good corpus to see experts specialise. In fast mode (the tests) it trains for a handful of
# steps only, so the routing is barely trained; the byte and FLOP counts don't care.
# Set `MINIMOE_TUTORIAL07_MODEL=DIR` to use a model you trained with `minimoe train`.

# %%
from_dir = os.environ.get("MINIMOE_TUTORIAL07_MODEL")
try:
    from minimoe.train.data import build_dataset
    from minimoe.train.loop import TrainConfig, Trainer
except ImportError:                       # an older minimoe without the training loop
    Trainer = None

if from_dir:
    model = minimoe.load(from_dir)
    print(f"loaded the trained model in {from_dir}")
elif Trainer is not None:
    iters = 8 if FAST else 1500
    tc = TrainConfig(preset="shakespeare-moe", data="pydoc", max_iters=iters,
                     batch_size=4 if FAST else 12, block_size=32 if FAST else 0,
                     eval_interval=iters, eval_iters=1 if FAST else 20, ckpt_interval=0,
                     sample_tokens=0, out=os.path.join(OUT, "07_model"))
    trainer = Trainer.new(tc, verbose=False)
    metrics = trainer.run()
    model = trainer.model
    print(f"trained shakespeare-moe for {iters} steps on pydoc: val loss "
          f"{trainer.history[-1].get('val_loss', float('nan')):.3f}")
else:
    tok = minimoe.ByteTokenizer()
    model = minimoe.Model(minimoe.Config.preset("shakespeare-moe", vocab_size=tok.vocab_size),
                          seed=0, tokenizer=tok)
    print("NOTE: no training loop in this minimoe: the weights are RANDOM. FLOPs and bytes are the "
          "same as for a trained model; the routing in section 4 is meaningless.")
tok, cfg = model.tokenizer, model.config
print(model)

# %% [markdown]
# ## 1. One token, in fp32
# We run a prompt into a KV cache (not traced), then trace exactly one more token: the decode
# step of generation. Every row is one op; the experts of each layer are folded into one row,
# and "(2 ran)" says only K = 2 of the E = 8 experts did any work.

# %%
prompt = "def area(r):\n    return 3.14 * r ** 2"
ids = np.asarray(tok.encode(prompt))


def trace_one_token(m, ids):
    """Prefill `ids` (untraced), then trace the decode of one more token. Returns the trace."""
    kv = m.new_kv_cache(1, len(ids) + 1)
    logits, _ = m.forward(ids[None], kv)                       # (1, T, V)
    nxt = logits[:, -1].argmax(axis=-1)[:, None]                # (1, 1) greedy next token
    with minimoe.trace() as t:
        m.forward(nxt, kv)
    return t


trace_one_token(model, ids)                 # a warm-up: the first call also loads compiled kernels
t32 = trace_one_token(model, ids)
print(t32.summary())

# %% [markdown]
# FLOPs per token are 2 per weight the token is multiplied by, plus attention's 4·H·D per cached
# key per layer. The trace's matmul FLOPs are exactly 2 × the active parameters that are
# matrices (the norm scales are vectors, applied elementwise, and counted apart):

# %%
counts = model.param_counts()
vectors = (2 * cfg.n_layers + 1) * cfg.d_model                 # the RMSNorm scales
tot = t32.totals()
print(f"matmul FLOPs traced              {tot['matmul_flops']:,}")
print(f"2 x (active_non_embedding - norms) {2 * (counts['active_non_embedding'] - vectors):,}")
print(f"attention FLOPs                  {tot['attention_flops']:,} = 4 x H x D x {len(ids) + 1} keys x "
      f"{cfg.n_layers} layers = {4 * cfg.n_heads * cfg.head_dim * (len(ids) + 1) * cfg.n_layers:,}")
a = views.active_params(t32, model)["per_token"]
print(f"parameters touched               {a['non_embedding']:,.0f} of {counts['total']:,} "
      f"({a['active_fraction']:.0%}) + one embedding row of {a['embedding_row']}")

# %% [markdown]
# ## 2. The same token in Q4_0
# `minimoe.quantize(model, "q4_0")` packs the weight matrices into 18-byte blocks of 32 weights:
# 4.5 bits per weight instead of 32. The model does the same multiplications (the matmul
# dequantizes the blocks as it goes), so the FLOPs cannot change; only the bytes can.

# %%
q4 = minimoe.quantize(model, "q4_0")
t4 = trace_one_token(q4, ids)
print(t4.summary())
b32, b4 = t32.totals()["weight_bytes"], t4.totals()["weight_bytes"]
print(f"\nFLOPs  fp32 {t32.totals()['flops']:,}   q4_0 {t4.totals()['flops']:,}")
print(f"bytes  fp32 {b32:,}   q4_0 {b4:,}   ratio {b32 / b4:.2f}x   (at most 32 / 4.5 = {32 / 4.5:.2f}x)")

# %% [markdown]
# Only about 3x, not 7x. The `fmt` column says why: each layer's experts are "fp32+q4_0". The
# expert width of this preset is F = 172, and Q4_0 cuts the *last* axis of a matrix into blocks
# of 32. The gate and up matrices are (F, C) = (172, 128): 128 = 4 blocks, fine. The down matrix
# is (C, F) = (128, 172), and 172 is not a multiple of 32, so it cannot be packed and stays fp32
# (llama.cpp refuses such a tensor outright). It is a third of every expert and now most of
# the bytes. The head is the embedding table (tie_embeddings), which minimoe keeps in float.
#
# Bytes and FLOPs depend only on shapes and formats, not on the values of the weights, so we can
# check this with fresh weights: the same model with F = 192 (6 blocks) and an untied head, which
# the recipe packs in q8_0.

# %%
by_comp = {name: t.group("component") for name, t in (("fp32", t32), ("q4_0", t4))}
print(f"{'component':<12}{'fp32 bytes':>12}{'q4_0 bytes':>12}")
for comp in by_comp["fp32"]:
    print(f"{comp:<12}{by_comp['fp32'][comp]['weight_bytes']:>12,}{by_comp['q4_0'][comp]['weight_bytes']:>12,}")

friendly = minimoe.Model(cfg.replace(d_expert=192, tie_embeddings=False), seed=0, tokenizer=tok)
f32, f4 = trace_one_token(friendly, ids), trace_one_token(minimoe.quantize(friendly, "q4_0"), ids)
fb32, fb4 = f32.totals()["weight_bytes"], f4.totals()["weight_bytes"]
print(f"\nF = 192, untied: bytes fp32 {fb32:,}  q4_0 {fb4:,}  ratio {fb32 / fb4:.2f}x; "
      f"FLOPs {f32.totals()['flops']:,} and {f4.totals()['flops']:,}")
assert f32.totals()["flops"] == f4.totals()["flops"] and fb32 / fb4 > 6.5

# %% [markdown]
# What remains above 4.5 bits is the float that every recipe keeps: the norm scales, the router
# (it decides which experts run, so nobody packs it) and the one embedding row, plus the q8_0
# head. The same token in every recipe, stacked by component:

# %%
recipes = {"fp32": t32}
for r in ("q8_0", "q4_1", "q4_0", "mxfp4", "mxfp4-moe"):
    recipes[r] = trace_one_token(minimoe.quantize(model, r), ids)
for r, t in recipes.items():
    print(f"{r:<10} FLOPs {t.totals()['flops']:>10,}   weight bytes {t.totals()['weight_bytes']:>10,}")
fig = plots.flops_bytes_bars(recipes, title="one token of shakespeare-moe: FLOPs stay, bytes fall")
plots.save(fig, os.path.join(OUT, "07_flops_bytes.png"))

# %% [markdown]
# ## 3. Twice the experts, the same top-k
# An MoE grows its parameters by adding experts, while each token still runs K of them. So
# doubling E at fixed K doubles the expert parameters and leaves the work per token as it was:
# only the router, which scores every expert, grows (by C FLOP-pairs per extra expert).

# %%
rows = []
for E in (8, 16) if FAST else (8, 16, 32, 64):
    m = minimoe.Model(cfg.replace(n_experts=E), seed=0, tokenizer=tok)
    t = trace_one_token(m, ids)
    g = t.group("component")
    rows.append((E, m.param_counts()["total"], t.totals()["flops"], t.totals()["weight_bytes"],
                 g["experts"]["flops"], g["router"]["flops"]))
print(f"{'E':>3}{'total params':>14}{'FLOPs/token':>13}{'bytes/token':>13}{'expert FLOPs':>14}{'router FLOPs':>14}")
for E, total, flops, nbytes, ef, rf in rows:
    print(f"{E:>3}{total:>14,}{flops:>13,}{nbytes:>13,}{ef:>14,}{rf:>14,}")
assert len({r[4] for r in rows}) == 1                          # the experts' work per token: identical
assert rows[1][2] - rows[0][2] == rows[1][5] - rows[0][5]      # the only FLOPs added: the router's

# %% [markdown]
# ## 4. What did the experts learn?
# We route a stretch of held-out text and ask, for each expert, which kind of character its
# tokens were. Each cell is a *lift*: how much more often than average that kind of character
# was sent to that expert (1 = no preference). In a trained model some experts prefer digits,
# others whitespace or code symbols. (In fast mode the model has barely trained, so expect noise.)

# %%
KINDS = ("letter", "digit", "space", "punct", "code")


def kind(ch: str) -> str:
    if ch.isalpha():
        return "letter"
    if ch.isdigit():
        return "digit"
    if ch.isspace():
        return "space"
    if ch in ".,;:!?'\"-":
        return "punct"
    return "code"                                              # ()[]{}<>=+*/%_#@ ...


if Trainer is not None:
    val = build_dataset("pydoc", tok, 64).val                  # held-out ids of the corpus
else:
    from pydoc_data.topics import topics
    val = np.asarray(tok.encode("\n\n".join(topics[k] for k in sorted(topics))[-20000:]))
n_windows = 4 if FAST else 32
T = cfg.max_seq_len
starts = np.linspace(0, len(val) - T - 1, n_windows).astype(int)
batch = np.stack([val[s:s + T] for s in starts])               # (B, T)
with minimoe.trace() as t_val:
    model(batch)
chars = [tok.decode([int(i)]) for i in batch.ravel()]          # (B*T,) in the router's token order
kinds = np.array([KINDS.index(kind(c)) for c in chars])        # (N,)
base = np.bincount(kinds, minlength=len(KINDS)) / len(kinds)   # P(kind)

lifts = {}
for layer, r in t_val.routing().items():
    E = r["tokens_per_expert"].shape[0]
    top1 = r["experts"][:, 0]                                  # (N,) each token's first choice
    counts = np.zeros((E, len(KINDS)))
    np.add.at(counts, (top1, kinds), 1)                        # (E, kinds)
    got = counts.sum(axis=1, keepdims=True)                    # (E, 1) tokens each expert got
    p_kind_given_e = np.where(got > 0, counts / np.maximum(got, 1), np.nan)
    lifts[layer] = p_kind_given_e / np.maximum(base, 1e-9)     # (E, kinds); NaN: expert got nothing
    print(f"layer {layer}: " + "  ".join(
        f"e{e}:{KINDS[int(np.argmax(row))]}({row.max():.1f}x)" if got[e, 0] else f"e{e}:-"
        for e, row in enumerate(lifts[layer])))

from matplotlib.figure import Figure

fig = Figure(figsize=(3 * len(lifts), 3.4), layout="constrained")
axes = fig.subplots(1, len(lifts))
for ax, (layer, lift) in zip(np.atleast_1d(axes), lifts.items()):
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#dddddd")   # grey: no tokens
    im = ax.imshow(np.log2(np.maximum(lift, 1 / 16)), cmap=cmap, vmin=-3, vmax=3)
    ax.set_xticks(range(len(KINDS)), KINDS, rotation=45, fontsize=8)
    ax.set_yticks(range(lift.shape[0]), [f"expert {e}" for e in range(lift.shape[0])], fontsize=8)
    ax.set_title(f"layer {layer}", fontsize=9)
fig.colorbar(im, ax=axes, label="log2 lift  (red: sent more than average)")
fig.suptitle("which characters each expert gets (first choice)")
plots.save(fig, os.path.join(OUT, "07_expert_kinds.png"))

# %% [markdown]
# The trace draws the rest: the routing of one prompt (each column a character, each row a layer
# and slot, the colour the chosen expert), the load per expert, how confident the router is,
# and where each op sits on this machine's roofline.

# %%
with minimoe.trace() as t_prompt:
    model(np.asarray(tok.encode("x = 42  # the answer, said Hamlet.")))
for stem, fig in plots.all_figures(t_prompt, tok).items():
    print("saved", plots.save(fig, os.path.join(OUT, f"07_{stem}.png")))
print(views.format_views(t_val, model))
