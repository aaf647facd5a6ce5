# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 09 · Router collapse, and three ways to prevent it
#
# A router learns which experts a token should use from the same gradient that trains the experts.
# That is a feedback loop: an expert that gets more tokens gets more updates, so it becomes more
# useful, so the router sends it even more tokens. Left alone, the loop can end with one expert
# doing most of the work and the others idle: **router collapse**. The model then has the compute
# of an MoE and the capacity of one small FFN.
#
# We make it happen on a tiny model, then fix it three ways:
#
# 1. the **load-balancing loss** (Switch Transformer, Fedus et al. 2021): a differentiable penalty
#    that pushes router probability away from busy experts;
# 2. **auxiliary-loss-free balancing** (DeepSeek-V3, 2024): a per-expert bias, added to the scores
#    only to *choose* the experts, nudged after every step against the load error;
# 3. **expert-choice routing** (Zhou et al. 2022): the experts choose their tokens, so each expert is
#    exactly full by construction.
#
# and we look at a fourth knob that is often mistaken for a fix, the **capacity factor**.
#
# Every figure is written under `./minimoe_out/09/` in the working directory (or under
# `$MINIMOE_TUTORIAL_OUT/09/`). `MINIMOE_FAST=1`
# (what the tests run) trains each model for 150 steps; without it, 400 steps. Either way a run
# takes seconds.
#
# Shape legend: N tokens, E experts, K top-k.

# %%
import os

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from minimoe.train.loop import TrainConfig, Trainer

if os.environ.get("MPLBACKEND") is None and not hasattr(__builtins__, "__IPYTHON__"):
    matplotlib.use("Agg")
FAST = os.environ.get("MINIMOE_FAST") == "1"
STEPS = 150 if FAST else 400
OUT = os.path.join(os.environ.get("MINIMOE_TUTORIAL_OUT") or "minimoe_out", "09")
os.makedirs(OUT, exist_ok=True)

# %% [markdown]
# ## 1. A model that collapses
#
# The `tiny-moe` preset (2 layers, width 32) with 4 experts per layer, **top-1**. The router scores
# each expert with a sigmoid, as DeepSeek-V3 does, and the one chosen expert's output is scaled by
# its score (no renormalisation: with top-1, renormalising would make the weight always 1 and the
# router would get no gradient from the task at all).
#
# We train on the text built into minimoe (Python's reference documentation), batch 8 x 32
# characters, learning rate 3e-3, and evaluate every few steps. Each evaluation records
# `expert_load`: per layer, the share of the val tokens' top-k choices that went to each expert.
# Even routing is 25% each.

# %%
TINY = dict(n_experts=4, top_k=1, router="sigmoid_topk", router_renorm=False)


def train(name: str, model: dict | None = None, **settings):
    """One run of the tiny model; `settings` are TrainConfig fields (balancing off unless given)."""
    tc = TrainConfig(preset="tiny-moe", batch_size=8, block_size=32, eval_iters=8, sample_tokens=0,
                     max_iters=STEPS, eval_interval=10, ckpt_interval=0, threads=1, lr=3e-3,
                     warmup_iters=10, seed=3, out=os.path.join(OUT, "runs", name),
                     model={**TINY, **(model or {})},
                     **{"aux_loss_coef": 0.0, "z_loss_coef": 0.0, **settings})
    trainer = Trainer.new(tc, verbose=False)
    trainer.run()
    h = trainer.history
    load = np.array([[l for l in r["expert_load"] if l is not None] for r in h])   # (evals, L, E)
    final = load[-1].max()
    print(f"{name:>15}: val loss {h[-1]['val_loss']:.3f}, busiest expert {100 * final:.0f}% of the tokens "
          f"(even: 25%)")
    return {"trainer": trainer, "iters": np.array([r["iter"] for r in h]), "load": load,
            "val": np.array([r["val_loss"] for r in h])}


def plot_load(run: dict, title: str, path: str):
    """Each expert's share of the tokens over training, one panel per layer."""
    L = run["load"].shape[1]
    fig, axes = plt.subplots(1, L, figsize=(4.2 * L, 3.1), sharey=True)
    for i, ax in enumerate(np.atleast_1d(axes)):
        for e in range(run["load"].shape[2]):
            ax.plot(run["iters"], 100 * run["load"][:, i, e], label=f"expert {e}")
        ax.axhline(25, color="#444444", ls=":", lw=1)
        ax.set_title(f"layer {i}")
        ax.set_xlabel("step")
        ax.set_ylim(0, 100)
    np.atleast_1d(axes)[0].set_ylabel("share of the tokens (%)")
    np.atleast_1d(axes)[-1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.show()
    plt.close(fig)


runs = {"no balancing": train("none")}
plot_load(runs["no balancing"], "no balancing: the router collapses", os.path.join(OUT, "09_collapse.png"))

# %% [markdown]
# Within the first few dozen steps most tokens go to one expert. In one layer that expert keeps
# them; in the other the favourite changes from one expert to the next, but at almost every moment
# one or two experts do nearly all the work. (At step 0 the load is already uneven: a random router
# is not an even one, because similar tokens have similar hidden states and so similar scores.)
#
# ## 2. Fix one: the load-balancing loss
#
# Switch Transformer's auxiliary loss, per MoE layer (minimoe/train/losses.py):
#
#     aux = E * sum_e f_e * P_e
#     f_e = share of the tokens whose top-k includes expert e     (hard counts: no gradient)
#     P_e = mean router probability of expert e over the tokens   (differentiable)
#
# Its gradient on the router probabilities is E f_e / N for every token: the busier the expert,
# the harder each of its probabilities is pushed down. It is added to the cross-entropy with a small
# coefficient, and it **goes into the router's backward pass** as an extra gradient on the probs
# (`router.backward(..., dprobs=...)`): nothing else in the model sees it.

# %%
runs["aux loss"] = train("aux", aux_loss_coef=0.1)
plot_load(runs["aux loss"], "load-balancing loss (coefficient 0.1)", os.path.join(OUT, "09_aux_loss.png"))

# %% [markdown]
# ## 3. Fix two: DeepSeek-V3's loss-free bias
#
# Each MoE layer gets a bias b (E,) - the tensor DeepSeek-V3's checkpoints call
# `e_score_correction_bias`. The router picks the top-k of `scores + b`, but weights the chosen
# experts by the plain `scores` (minimoe/nn/router.py). After every optimizer step
# (minimoe/train/balance.py):
#
#     b_e <- b_e + gamma * sign(mean load - load_e)
#
# No gradient, no change to the loss: an overloaded expert simply becomes a little harder to
# choose. `minimoe train --bias-update-rate 0.01` turns it on.

# %%
runs["loss-free bias"] = train("loss_free", bias_update_rate=0.01)
plot_load(runs["loss-free bias"], "loss-free bias (gamma 0.01)", os.path.join(OUT, "09_loss_free.png"))
bias = runs["loss-free bias"]["trainer"].model.params["layers.0.moe.router.e_score_correction_bias"]
print("layer 0's correction bias after training:", np.round(bias, 3))

# %% [markdown]
# ## 4. Fix three: let the experts choose
#
# In expert-choice routing each expert takes the `capacity = T * K / E` tokens of a sequence that
# score highest for it. Every expert is exactly full, so there is nothing to balance. A token may be
# taken by several experts, or by none (then it passes on through the residual connection).
#
# The catch, for a language model: whether expert e takes token t depends on the scores of the
# *later* tokens of the sequence too, so routing is not causal, and the val loss it reports can
# peek ahead. minimoe therefore generates with a token-choice reading of the same router (each token
# its K most probable experts). Zhou et al. evaluated it on encoder and encoder-decoder tasks.

# %%
runs["expert choice"] = train("expert_choice", model={"router": "expert_choice"})
plot_load(runs["expert choice"], "expert choice: full by construction", os.path.join(OUT, "09_expert_choice.png"))

# %% [markdown]
# ## 5. Not a fix: the capacity factor
#
# A capacity factor gives each expert a fixed buffer of `ceil(factor * T * K / E)` tokens per
# sequence (minimoe/nn/capacity.py). It bounds what an expert *runs*, which is what an accelerator
# needs; the tokens that do not fit are **dropped**: they skip the MoE layer and pass on unchanged
# through the residual. It does nothing to the router's preferences, so a collapsed router just
# drops most of its tokens.

# %%
runs["capacity 1.0"] = train("capacity", model={"capacity_factor": 1.0, "eval_capacity_factor": 1.0})
last = runs["capacity 1.0"]["trainer"].history[-1]
print(f"with capacity 1.0: the router still sends {100 * runs['capacity 1.0']['load'][-1].max():.0f}% of its "
      f"choices to one expert, and {100 * last['dropped_tokens']:.0f}% of the val tokens skip the MoE layers")

# %% [markdown]
# ## 6. All of them side by side

# %%
names = list(runs)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
for n in names:
    ax1.plot(runs[n]["iters"], runs[n]["val"], label=n)
ax1.set_xlabel("step")
ax1.set_ylabel("val loss (nats/char)")
ax1.set_title("validation loss")
ax1.legend(fontsize=8)
ax2.bar(names, [100 * runs[n]["load"][-1].max() for n in names],
        color=["#d62728", "#1f77b4", "#1f77b4", "#1f77b4", "#8c8c8c"])
ax2.axhline(25, color="#444444", ls=":", lw=1, label="even")
ax2.axhline(60, color="#d62728", ls="--", lw=0.8, label="collapse (60%)")
ax2.set_ylabel("busiest expert's share at the end (%)")
ax2.set_title("load of the busiest expert")
ax2.tick_params(axis="x", rotation=20)
ax2.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(OUT, "09_summary.png"), dpi=110)
plt.show()
plt.close(fig)
print(f"{'method':>15} {'val loss':>9} {'busiest':>8}")
for n in names:
    print(f"{n:>15} {runs[n]['val'][-1]:>9.3f} {100 * runs[n]['load'][-1].max():>7.0f}%")

# %% [markdown]
# ## Questions people ask
#
# **Where does the balancing loss go?** Into the router only: `losses.load_balancing_loss` returns a
# gradient on each layer's router probabilities, which `Model.backward(..., router_grads=...)` hands
# to `router.backward`. The experts never see it.
#
# **Which fix should I use?** On this toy all three work. At scale, the loss needs its coefficient
# tuned against the task loss (too large and it hurts quality); the loss-free bias has one rate and
# never fights the task gradient, which is why DeepSeek-V3 adopted it (with a tiny sequence-wise
# loss as a backstop: `--aux-loss-form sequence`); expert choice is balanced for free but not
# causal. docs/experiments.md measures them on tinyshakespeare at full size.
#
# **What happens to dropped tokens?** Nothing: the MoE layer adds 0 for them, so their hidden state
# passes through the residual connection unchanged. `minimoe train` reports the dropped share in
# `metrics.json` (`dropped_tokens`) when a capacity factor is set.
#
# **How do I see collapse in my own run?** `minimoe inspect --model RUN --routing --data FILE
# --plot DIR` draws the load over training from the run's metrics.json, next to where each kind of
# character goes and which experts work together.
