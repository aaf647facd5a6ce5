# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 03 · Train a tiny Mixture-of-Experts on Shakespeare (if found), and watch the router learn
#
# We train the `shakespeare-moe` preset from scratch: 4 layers, width 128, and 8 experts of
# width 172 per layer, of which each token uses 2. That is nanoGPT's CPU recipe for
# character-level Shakespeare with its feed-forward layers turned into mixtures of experts.
# Every gradient comes from the hand-written backward passes that tutorial 02 checked.
#
# We train it twice: once with the load-balancing loss and once without. Then we plot the loss
# curves, and how the tokens spread over the experts of each layer as training goes on.
#
# With `MINIMOE_FAST=1` (the tests) both runs are cut to a few dozen steps. Without it, each run
# is the full 2000 steps. That is not "a minute or two": the whole tutorial took 4.5 minutes on 2
# cores in one measurement, and ran at 0.6 steps/s (over an hour for both runs) on 2 cores that
# other jobs loaded (tutorials/README.md). Start it, and read on while it trains.
#
# Shape legend: B batch, T block length, V vocab, E experts, K top-k.

# %%
import json
import os

import matplotlib.pyplot as plt
import numpy as np

import minimoe
from minimoe.train import data as train_data
from minimoe.train.loop import TrainConfig, Trainer

FAST = os.environ.get("MINIMOE_FAST") == "1"
OUT = os.environ.get("MINIMOE_TUTORIAL_OUT") or os.path.join(os.getcwd(), "minimoe_out")
os.makedirs(OUT, exist_ok=True)

# %% [markdown]
# ## 1. The text
#
# tinyshakespeare is 1.1 MB of plays. The repository does not ship it. We look for it in these
# places, in order: the file named by `MINIMOE_SHAKESPEARE`, `shared/data/` beside or above the
# working directory, then minimoe's data cache, which `minimoe data shakespeare` fills. If none
# has it, we fall back to the corpus built into CPython, Python's own reference documentation,
# and say so loudly: every title below then names that corpus, not Shakespeare.

# %%
candidates = [os.environ.get("MINIMOE_SHAKESPEARE", ""),
              *(os.path.join(up, "shared", "data", "tinyshakespeare.txt") for up in (".", "..", "../..")),
              os.path.join(train_data.cache_dir(), "tinyshakespeare.txt")]
source = next((os.path.normpath(p) for p in candidates if p and os.path.exists(p)), "pydoc")
CORPUS = "pydoc (Shakespeare not found)" if source == "pydoc" else "Shakespeare"
dataset = train_data.build_dataset(source, "char", block_size=64)
print("data:", dataset.description)
if source == "pydoc":
    print("WARNING: tinyshakespeare was not found; this run trains on Python's docs instead. "
          "Run `minimoe data shakespeare` or set MINIMOE_SHAKESPEARE=/path/to/tinyshakespeare.txt.")
print(f"{len(dataset.train):,} training and {len(dataset.val):,} validation characters, "
      f"vocabulary of {dataset.vocab_size}")
print(repr(dataset.tokenizer.decode(dataset.train[:120])))

# %% [markdown]
# ## 2. The model
#
# Each token runs 2 of the 8 experts, so its active parameters (what it multiplies through)
# are about the dense preset's, while the model holds about three times as many in total.

# %%
cfg = minimoe.Config.preset("shakespeare-moe", vocab_size=dataset.vocab_size)
counts = minimoe.Model(cfg).param_counts()
print(f"{counts['total']:,} parameters, {counts['active']:,} active per token "
      f"({counts['active'] / counts['total']:.0%})")

# %% [markdown]
# ## 3. Two training runs
#
# The recipe is nanoGPT's: batch 12 x 64 characters, AdamW with betas (0.9, 0.99) and weight decay
# 0.1, learning rate 1e-3 warming up for 100 steps and then decaying along a cosine to 1e-4,
# gradient clipping at 1.0. The first run adds the load-balancing loss (coefficient 0.01) and the
# router z-loss (0.001). The second run sets both to zero, so nothing pushes the router to spread
# the tokens.
#
# `Trainer.run()` evaluates every `eval_interval` steps. Each evaluation records the train and val
# losses and each expert's share of the top-2 assignments on the val batches. It writes
# everything to `metrics.json` in the run folder, next to a resumable checkpoint.

# %%
steps = 40 if FAST else 2000
common = dict(preset="shakespeare-moe", max_iters=steps, eval_interval=10 if FAST else 100,
              eval_iters=1 if FAST else 20, ckpt_interval=0, sample_tokens=0, seed=1337)
if FAST:
    common.update(batch_size=4, warmup_iters=5)
runs = {}
for name, coefs in (("balanced", dict(aux_loss_coef=0.01, z_loss_coef=0.001)),
                    ("unbalanced", dict(aux_loss_coef=0.0, z_loss_coef=0.0))):
    print(f"\n=== {name}: aux {coefs['aux_loss_coef']}, z {coefs['z_loss_coef']}")
    trainer = Trainer.new(TrainConfig(out=os.path.join(OUT, "03_runs", name), **common, **coefs),
                          dataset=dataset)
    runs[name] = (trainer, trainer.run())

# %% [markdown]
# ## 4. Loss curves
#
# The thin lines are the cross-entropy of each training batch (smoothed). The dots are the
# evaluations on held-out text. At this size and step count the two runs usually end close
# together: balancing is about using the experts, and a small model can learn well with a few
# favourite experts.

# %%
def smooth(y, k=25):
    k = max(1, min(k, len(y) // 5))
    return np.convolve(y, np.ones(k) / k, mode="valid")


fig, ax = plt.subplots(figsize=(7, 4))
for (name, (trainer, m)), color in zip(runs.items(), ("C0", "C3")):
    curve = np.array(m["train_curve"])                       # (iters, 4): iter, ce, aux, z
    ax.plot(curve[len(curve) - len(smooth(curve[:, 1])):, 0], smooth(curve[:, 1]), color=color, lw=0.8,
            alpha=0.7, label=f"{name}: train batches")
    h = m["history"]
    ax.plot([r["iter"] for r in h], [r["val_loss"] for r in h], "o-", color=color, ms=3,
            label=f"{name}: val (final {m['val_loss']:.3f})")
ax.set_xlabel("iteration")
ax.set_ylabel("cross-entropy (nats per character)")
ax.set_title(f"shakespeare-moe on {CORPUS}, with and without load balancing")
ax.legend()
fig.tight_layout()
fig.savefig(os.path.join(OUT, "03_loss_curves.png"), dpi=110)
for name, (_, m) in runs.items():
    print(f"{name:10s} train {m['train_loss']:.4f}  val {m['val_loss']:.4f}  "
          f"aux {m['aux_loss']:.3f}  z {m['z_loss']:.3f}  {m['ms_per_iter']:.0f} ms/iter")

# %% [markdown]
# ## 5. Expert load per layer over training
#
# Each panel is one layer of one run. The bands stack the 8 experts' shares of the top-2
# assignments, so each band would be 1/8 of the height if the load were even. The
# load-balancing loss is $E \sum_e f_e P_e$, where $f_e$ is expert $e$'s share of the tokens and
# $P_e$ its mean router probability. It reaches its minimum, K = 2 per layer, when the shares are
# even. Without it, nothing stops the router from sending most tokens to a few experts.

# %%
n_layers, E = cfg.n_layers, cfg.n_experts
fig, axes = plt.subplots(len(runs), n_layers, figsize=(3 * n_layers, 2.6 * len(runs)), sharex=True, sharey=True)
colors = plt.cm.tab10(np.arange(E))
for row, (name, (_, m)) in enumerate(runs.items()):
    iters = [r["iter"] for r in m["history"]]
    for layer in range(n_layers):
        load = np.array([r["expert_load"][layer] for r in m["history"]])   # (evals, E)
        ax = axes[row, layer]
        ax.stackplot(iters, load.T, colors=colors, linewidth=0)
        ax.set_title(f"{name}, layer {layer}", fontsize=9)
        ax.set_ylim(0, 1)
        if layer == 0:
            ax.set_ylabel("share of assignments")
        if row == len(runs) - 1:
            ax.set_xlabel("iteration")
handles = [plt.Rectangle((0, 0), 1, 1, color=colors[e]) for e in range(E)]
fig.legend(handles, [f"expert {e}" for e in range(E)], loc="lower center", ncol=E, fontsize=8,
           frameon=False)
fig.suptitle(f"expert load per layer, shakespeare-moe on {CORPUS}")
fig.tight_layout(rect=(0, 0.06, 1, 1))
fig.savefig(os.path.join(OUT, "03_expert_load.png"), dpi=110)


def imbalance(load):
    """max share / mean share: 1.0 is perfectly even, E is one expert taking everything."""
    load = np.asarray(load)
    return load.max() / load.mean()


for name, (trainer, m) in runs.items():
    per_layer = ", ".join(f"{imbalance(l):.2f}" for l in m["expert_load"])
    print(f"{name:10s} busiest expert / average, per layer: {per_layer}")

# %% [markdown]
# ## 6. What did it learn?
#
# The run folder is an ordinary minimoe checkpoint. `minimoe.load` reads it back, and
# `generate` samples from it with a KV cache. After a full run the text is recognisably
# Shakespeare-shaped: speaker names, line breaks, mostly real words.

# %%
folder = runs["balanced"][0].tc.out
model = minimoe.load(folder)
prompt = model.tokenizer.encode("\n")
out = model.generate(prompt, 200 if not FAST else 60, temperature=0.8, seed=0)
print(model.tokenizer.decode(out))
with open(os.path.join(folder, "metrics.json")) as f:
    saved = json.load(f)
print(f"\nmetrics.json: val_loss {saved['val_loss']:.4f} after {saved['iters']} iterations, "
      f"{saved['tokens_per_s']:,.0f} tokens/s")

# %% [markdown]
# To train from the command line instead: `minimoe train --data shakespeare` (after
# `minimoe data shakespeare`), or `minimoe train --aux-loss-coef 0` to repeat the unbalanced run.
# `docs/training.md` has the math behind every gradient used here.
