# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 13 · Serving: prefill against decode, batches, and how many experts a batch touches
#
# A Mixture-of-Experts model runs K of its E experts per token, so one token reads only K/E of
# the expert weights. That is the MoE's bargain at batch 1. A server decodes many sequences at
# once, and every token of the batch picks its own experts: the step reads the *union* of their
# choices. This lesson measures that union against the formula, measures prefill, decode and
# batched decode on this CPU, and ends with the questions people ask most:
#
# * why must all E experts sit in memory when only K are active? (any token may pick any of them,
#   and a batch picks nearly all of them);
# * why can an MoE be slower than a dense model? (per step it can read as many bytes as a dense
#   model of its *total* size, and it pays for routing, gathering and many small matmuls);
# * can the experts live in CPU memory and the rest on a GPU? (`minimoe estimate --offload-experts`).
#
# **Objectives.** Derive E(1 - (1 - K/E)^B) and check it against a trained router; explain from
# the bytes read why batching helps decode and why it helps an MoE less; use the estimator's
# `--batch` and `--offload-experts`.
#
# **Prerequisites:** tutorials 01 (the forward pass), 06 (the estimator), 07 (bytes per token).
#
# Shape legend: B sequences in a batch, T time, E experts, K top-k, L MoE layers.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

import minimoe
from minimoe.bench.timing import best_time
from minimoe.inspect.estimate import estimate
from minimoe.inspect.serving import expected_distinct_experts
from minimoe.train.loop import TrainConfig, Trainer

FAST = os.environ.get("MINIMOE_FAST") == "1"
OUT = os.environ.get("MINIMOE_TUTORIAL_OUT") or os.path.join(os.getcwd(), "minimoe_out")
os.makedirs(OUT, exist_ok=True)
CPU = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
           "unknown CPU") if os.path.exists("/proc/cpuinfo") else "unknown CPU"
print("CPU:", CPU, "| cores:", os.cpu_count(), "| fast mode" if FAST else "| full mode")

# %% [markdown]
# ## 1. How many distinct experts does a batch touch?
#
# Suppose each of B tokens picks K of the E experts uniformly at random, independently. One token
# misses a given expert with probability 1 - K/E; all B tokens miss it with (1 - K/E)^B. So the
# expected number of experts that at least one token picks is
#
# $$\text{distinct}(B) = E\,\bigl(1 - (1 - K/E)^B\bigr),$$
#
# which is K at B = 1 and approaches E quickly: with E = 8, K = 2, a batch of 8 tokens already
# touches 7.2 experts on average.
#
# Real routers are not uniform. We train a small MoE (16 experts, top-2) on the text built into
# minimoe, then route the *last* token of many held-out windows (each window is one sequence of a
# batch being decoded) and count the distinct experts of random batches of B of them.

# %%
E, K = 16, 2
STEPS = 60 if FAST else 600
tc = TrainConfig(preset="tiny-moe", model=dict(n_experts=E, top_k=K), batch_size=8, block_size=32,
                 max_iters=STEPS, eval_interval=STEPS, eval_iters=2, ckpt_interval=0, sample_tokens=0,
                 lr=3e-3, warmup_iters=10, seed=0, aux_loss_coef=0.01, threads=1,
                 out=os.path.join(OUT, "13_run"))
trainer = Trainer.new(tc, verbose=False)
trainer.run()
model = trainer.model
print(f"trained {STEPS} steps: val loss {trainer.history[-1]['val_loss']:.3f}")

rng = np.random.default_rng(0)
val = trainer.data.val
M = 256                                                      # windows = candidate sequences
starts = rng.integers(0, len(val) - 33, M)
windows = np.stack([val[s:s + 32] for s in starts])          # (M, T)
_, cache = model.forward(windows)
last = [r["experts"].reshape(M, 32, K)[:, -1] for r in cache["routing"] if r is not None]  # L x (M, K)

BATCHES = [1, 2, 4, 8, 16, 32, 64, 128]
TRIALS = 200
measured = []
for B in BATCHES:
    counts = [len(np.unique(experts[rng.choice(M, B, replace=False)]))
              for experts in last for _ in range(TRIALS)]
    measured.append(np.mean(counts))
formula = [expected_distinct_experts(E, K, B) for B in BATCHES]
print(f"{'B':>5} {'measured':>9} {'formula':>8}   (distinct experts per MoE layer, of {E})")
for B, m, f in zip(BATCHES, measured, formula):
    print(f"{B:>5} {m:>9.2f} {f:>8.2f}")

# %% [markdown]
# The measured curve sits at or below the formula (up to sampling noise at small B): a trained
# router prefers some experts, so the union grows more slowly than under uniform routing. The
# load-balancing loss, on here, narrows the gap as training goes on: after 600 steps (full mode)
# a batch of 8 touched 10.0 experts against the formula's 10.5, after 60 steps (fast mode) 8.8. Either way, by a batch of a few dozen tokens nearly every expert is read every
# step.

# %%
fig, ax = plt.subplots(figsize=(6.4, 4))
ax.plot(BATCHES, formula, "o-", label=f"formula E(1-(1-K/E)^B), E={E}, K={K}")
ax.plot(BATCHES, measured, "s--", label=f"measured, trained router ({STEPS} steps)")
ax.axhline(E, color="#777777", ls=":", lw=1, label=f"all {E} experts")
ax.axhline(K, color="#bbbbbb", ls=":", lw=1, label=f"K = {K} (batch 1)")
ax.set_xscale("log", base=2)
ax.set_xlabel("tokens in the batch B (one per sequence)")
ax.set_ylabel("distinct experts per MoE layer")
ax.set_title("How many experts does a decode step read?")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(OUT, "13_distinct_experts.png"), dpi=110)
plt.show()

# %% [markdown]
# ## 2. Why the MoE's advantage shrinks with the batch
#
# Decoding is bound by the bytes it reads (tutorial 07). A step of B sequences reads the
# non-expert weights once, the distinct experts' weights once, and each sequence's KV cache. The
# estimator does this sum (`minimoe estimate --batch B`). For Mixtral 8x7B in Q4_0, compare the
# weight bytes per generated token with those of a dense model of the same total size, which
# reads all its weights every step whatever B is:

# %%
rows = []
for B in [1, 2, 4, 8, 16, 32, 64]:
    r = estimate("mixtral-8x7b", dtype="q4_0", batch=B, context=1024, hardware="h100")
    s = r["batched_decode"]
    rows.append((B, s["distinct_experts_per_layer"], s["weight_bytes"] / B, r["weight_bytes"] / B))
print(f"{'B':>4} {'experts':>8} {'MoE GB/token':>13} {'dense GB/token':>15} {'MoE / dense':>12}")
for B, d, moe_b, dense_b in rows:
    print(f"{B:>4} {d:>8.2f} {moe_b / 1e9:>13.3f} {dense_b / 1e9:>15.3f} {moe_b / dense_b:>12.2f}")

fig, ax = plt.subplots(figsize=(6.4, 4))
ax.plot([r[0] for r in rows], [r[2] / r[3] for r in rows], "o-",
        label="Mixtral 8x7B: weight bytes per token / a dense model of the same total size")
ax.set_xscale("log", base=2)
ax.set_ylim(0, 1.05)
ax.set_xlabel("sequences decoded together B")
ax.set_ylabel("MoE / dense bytes per token")
ax.set_title("The MoE reads K/E of its experts at batch 1, nearly all at batch 32")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(OUT, "13_moe_vs_dense.png"), dpi=110)
plt.show()

# %% [markdown]
# At B = 1 Mixtral reads about a quarter of what a dense 47B model would; at B = 32 the same.
# Batching still pays for both (the bytes per token fall as 1/B for the shared weights), but the
# MoE's *extra* saving is gone. That is also why all E experts must be in fast memory: any batch
# of moderate size touches them all every step.
#
# ## 3. Prefill against decode, and batched decode, measured
#
# Prefill runs the whole prompt in one forward pass: each weight read is used for T tokens, so
# it is bound by compute (FLOPs). Decode runs one position per sequence: each weight read serves
# B tokens. We measure both on this CPU with a KV cache. The machine these numbers were made on
# may be shared: compare the numbers of one run with each other, not with another day's.

# %%
preset = "shakespeare-moe" if FAST else "mixtral-mini"
cfg = minimoe.Config.preset(preset, vocab_size=256)
big = minimoe.Model(cfg, seed=0)
P = 64 if FAST else 256
prompt = np.random.default_rng(1).integers(0, 256, (1, P))


t_prefill = best_time(lambda: big.forward(prompt, big.new_kv_cache(1, P + 1)), repeat=3)
print(f"{preset}: prefill of {P} tokens {t_prefill * 1e3:.1f} ms = {P / t_prefill:,.0f} tokens/s")

decode_rows = []
for B in ([1, 2, 4, 8] if FAST else [1, 2, 4, 8, 16, 32]):
    kv = big.new_kv_cache(B, P + 64)
    big.forward(np.repeat(prompt, B, axis=0), kv)           # prefill B copies of the prompt
    nxt = np.zeros((B, 1), np.int64)

    def step():
        big.forward(nxt, kv)
        kv.length -= 1                                       # undo: measure the same position again
    t = best_time(step, repeat=5)                            # the fastest of 5, after a warm-up call
    decode_rows.append((B, t))
    print(f"decode B={B:>2}: {t * 1e3:7.2f} ms per step = {B / t:8,.0f} tokens/s")

base = decode_rows[0][1]
print("tokens/s relative to B=1 (same run): "
      + ", ".join(f"B={B}: {B * base / t:.1f}x" for B, t in decode_rows))

fig, ax = plt.subplots(figsize=(6.4, 4))
ax.plot([b for b, _ in decode_rows], [b / t for b, t in decode_rows], "o-", label="batched decode")
ax.axhline(P / t_prefill, color="C3", ls="--", label=f"prefill of {P} tokens")
ax.set_xscale("log", base=2)
ax.set_xlabel("sequences decoded together B")
ax.set_ylabel("tokens per second")
ax.set_title(f"{preset} on {CPU[:40]}")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(OUT, "13_prefill_decode.png"), dpi=110)
plt.show()

# %% [markdown]
# Decode tokens/s grows with B while the step stays memory-bound, then flattens as the step
# becomes compute-bound (and, for an MoE, as the batch touches every expert). Prefill is the
# ceiling batched decode approaches. On a tiny model the fixed Python cost of a step dominates;
# `minimoe bench decode` measures this properly.
#
# ## 4. Experts in CPU memory, the rest on a GPU
#
# Because only the routed experts are large and each token reads K/E of them, llama.cpp can keep
# the experts in the host's RAM and compute them on the CPU, with attention, router and KV cache
# on the GPU. The estimator models it:

# %%
r = estimate("gpt-oss-120b", recipe="experts-mxfp4", hardware="rtx-4090", offload_experts=True,
             host="ddr5-desktop", link="pcie4-x16")
o = r["offload"]
print(f"gpt-oss-120b (experts MXFP4, rest bf16), all on one RTX 4090: "
      f"{'fits' if r['hardware'][0]['fits'] else 'does not fit'} ({r['memory_bytes'] / 1e9:.1f} GB)")
print(f"  experts offloaded: GPU holds {o['gpu_bytes'] / 1e9:.1f} GB of {o['gpu_usable_bytes'] / 1e9:.0f}, "
      f"host RAM {o['host_bytes'] / 1e9:.1f} GB of {o['host_usable_bytes'] / 1e9:.0f}")
print(f"  decode <= {o['tokens_per_s_upper_experts_on_cpu']:.0f} tokens/s with the experts on the CPU, "
      f"<= {o['tokens_per_s_upper_experts_over_link']:.0f} if copied over PCIe each step")

# %% [markdown]
# The same command line: `minimoe estimate gpt-oss-120b --recipe experts-mxfp4 --offload-experts
# --hardware rtx-4090 --host ddr5-desktop`. With a batch, the offloaded experts cost more: the
# union of the batch's experts must stream from DDR each step (try `--batch 8`).
#
# ## Exercises
#
# 1. Derive the variance of the number of distinct experts (hint: indicator variables per expert)
#    and add error bars to the first figure.
# 2. Retrain with `aux_loss_coef=0` (tutorial 09) and measure again: how far below the formula
#    does a collapsing router fall, and what does that mean for a server?
# 3. With `minimoe estimate`, find the batch at which Qwen3-30B-A3B (E 128, K 8) reads half of its
#    experts per step. Check it against the formula by hand.
