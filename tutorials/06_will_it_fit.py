# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 06 · Will it fit? gpt-oss-120b, by hand and by `minimoe.estimate`
#
# When an open-weight model comes out, the same questions follow it around: how many parameters,
# how many of them work on each token, how much memory in bf16 or in 4 bits, does it fit on one
# GPU, on a gaming card, on a laptop, and how fast could it possibly go? All of it follows from
# the config. We work it out for OpenAI's gpt-oss-120b, first by hand from the config, then with
# `minimoe.inspect.estimate`, which does the same sums for any preset or `config.json` and
# checks them against transformers (tests/test_estimate.py).
#
# Units: GB = 10^9 bytes (as GPU makers count), GiB = 2^30 bytes (as file sizes are often shown).
#
# Shape legend: C d_model, H heads, G kv heads, D head dim, F expert width, E experts, K top-k,
# V vocab, L keys a query attends to.

# %%
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import minimoe
from minimoe.inspect.estimate import estimate, plot_memory, report
from minimoe.inspect.hardware import HARDWARE
from minimoe.params import count_params, param_shapes

FAST = os.environ.get("MINIMOE_FAST") == "1"
OUT = os.environ.get("MINIMOE_TUTORIAL_OUT", os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
os.makedirs(OUT, exist_ok=True)

cfg = minimoe.Config.preset("gpt-oss-120b")   # its Hugging Face config.json, as a minimoe Config
for field in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "n_experts",
              "top_k", "d_expert", "sliding_window", "attn_sinks", "expert_bias"):
    print(f"{field:16s} {getattr(cfg, field)}")

# %% [markdown]
# ## 1. 117 billion parameters, and where they are
# `param_shapes` lists every array. One MoE layer has 128 experts; each expert is a SwiGLU with a
# gate and an up matrix (F, C) and a down matrix (C, F), plus biases. With C = F = 2880:

# %%
C, F, E, V = cfg.d_model, cfg.d_expert, cfg.n_experts, cfg.vocab_size
one_expert = 3 * F * C + 2 * F + C          # gate, up, down weights + gate/up/down biases
experts = cfg.n_layers * E * one_expert
print(f"one expert        {one_expert:>17,}")
print(f"all experts       {experts:>17,}   (36 layers x 128 experts)")
counts = count_params(cfg)
print(f"the whole model   {counts['total']:>17,}   = {counts['total'] / 1e9:.1f}B")
print(f"experts' share    {experts / counts['total']:.1%}")
for name, shape in list(param_shapes(cfg).items())[:16]:
    print(f"   {name:34s} {shape}")

# %% [markdown]
# 98% of the model is experts. The embedding table and the output head are V x C = 201,088 x 2880
# each (0.58B), attention is under 1B in all.
#
# ## 2. bf16 needs about 234 GB
# Two bytes per parameter:

# %%
print(f"bf16: 2 x {counts['total']:,} = {2 * counts['total'] / 1e9:.1f} GB")
r16 = estimate("gpt-oss-120b", dtype="bf16", context=8192)
h100 = next(v for v in r16["hardware"] if v["hardware"].startswith("H100"))
print(f"with an 8k-token KV cache and 10% overhead: {r16['memory_bytes'] / 1e9:.1f} GB "
      f"-> {h100['devices_needed']} H100s of 80 GB")

# %% [markdown]
# ## 3. MXFP4 experts: about 61 GiB, one 80 GB H100
# MXFP4 stores a block of 32 weights as 32 four-bit codes (16 bytes) and one shared power-of-two
# scale (1 byte): 17 bytes per 32 weights, 4.25 bits per weight. gpt-oss ships its expert
# matrices this way and keeps everything else (attention, router, embedding, head, norms and all
# biases) in bf16.

# %%
expert_matrices = cfg.n_layers * E * 3 * F * C
rest = counts["total"] - expert_matrices
by_hand = expert_matrices // 32 * 17 + 2 * rest
print(f"expert matrices {expert_matrices:,} weights x 17/32 bytes = {expert_matrices // 32 * 17 / 1e9:.1f} GB")
print(f"everything else {rest:,} parameters x 2 bytes     = {2 * rest / 1e9:.1f} GB")
print(f"total {by_hand:,} bytes = {by_hand / 2**30:.1f} GiB  (the model card: 60.8 GiB)")

r = estimate("gpt-oss-120b", recipe="experts-mxfp4", context=8192)
assert r["weight_bytes"] == by_hand
print(f"\nKV cache at 8k context: {r['kv_cache_bytes'] / 1e9:.2f} GB; overhead {r['overhead_bytes'] / 1e9:.1f} GB;"
      f" needed {r['memory_bytes'] / 1e9:.1f} GB")
for v in r["hardware"]:
    print(f"  {v['hardware']:40s} fits: {'yes' if v['fits'] else 'no ':3s}  devices: {v['devices_needed']}")

# %% [markdown]
# The KV cache is small because of two choices in the architecture. Grouped-query attention keeps
# only G = 8 key/value heads of D = 64 (2*8*64 = 1024 values per token per layer, where 64 full
# heads would need 8192), and half the layers attend to a sliding window of 128 tokens, so they
# never keep more than 128 tokens. Only the 18 full layers grow with the context:

# %%
contexts = [1024, 8192, 32768, 131072] if FAST else [2**k for k in range(8, 18)]
full_only = cfg.replace(sliding_layers=[])      # the same model, every layer full attention
kv = [estimate(cfg, context=n)["kv_cache_bytes"] / 1e9 for n in contexts]
kv_full = [estimate(full_only, context=n)["kv_cache_bytes"] / 1e9 for n in contexts]
for n, a, b in zip(contexts, kv, kv_full):
    print(f"context {n:>7,}: {a:6.2f} GB with sliding windows, {b:6.2f} GB without")
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(contexts, kv, marker="o", label="gpt-oss-120b (half the layers slide over 128 tokens)")
ax.plot(contexts, kv_full, marker="o", label="if every layer kept the full context")
ax.set_xscale("log", base=2)
ax.set_xlabel("context (tokens)")
ax.set_ylabel("KV cache, GB (bf16, batch 1)")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(OUT, "06_kv_cache.png"), dpi=100)
plt.close(fig)

# %% [markdown]
# ## 4. Only 5.1B parameters are read per token
# The router picks K = 4 of the 128 experts in each layer, so a token runs through 4/128 of the
# expert weights, plus all of attention, the routers, the norms and the head. The embedding
# table is only looked up (one row), so the usual "active" count leaves it out:

# %%
a = counts["active_by_component"]
for c in ("attention", "router", "experts", "norms", "head"):
    print(f"  {c:10s} {a[c]:>15,}")
print(f"  active without the embedding: {counts['active_non_embedding']:,} = "
      f"{counts['active_non_embedding'] / 1e9:.2f}B   (the model card: 5.1B)")
print(f"  4 of 128 experts: {cfg.n_layers} x 4 x {one_expert:,} = {cfg.n_layers * 4 * one_expert:,}")

# %% [markdown]
# Generating one token (batch 1) has to stream every one of those weights from memory once.
# That sets a hard ceiling on speed: tokens/s <= bandwidth / bytes per token. FLOPs hardly matter
# here: 2 FLOPs per active weight is ~10 GFLOP per token, which an H100 does in microseconds.

# %%
print(f"bytes read per token: {r['weight_bytes_per_token'] / 1e9:.2f} GB of weights "
      f"+ {r['kv_bytes_per_token_read'] / 1e9:.2f} GB of KV cache")
for c, b in r["weight_bytes_per_token_by_component"].items():
    if b:
        print(f"   {c:10s} {b / 1e9:6.3f} GB")
print(f"decode FLOPs per token: {r['flops_per_token']['decode'] / 1e9:.1f} GFLOP")
print(f"  {r['formulas']['flops_decode']}")
print(f"H100 bound: {h100['bandwidth_gbs']:,} GB/s / {r['bytes_per_token'] / 1e9:.2f} GB = "
      f"{h100['bandwidth_gbs'] * 1e9 / r['bytes_per_token']:.0f} tokens/s")
print(f"the same MoE all in bf16 reads {r16['bytes_per_token'] / 1e9:.1f} GB per token: "
      f"{h100['bandwidth_gbs'] * 1e9 / r16['bytes_per_token']:.0f} tokens/s at best (if it fit)")
print(f"a dense 117B model in bf16 would read all {r16['weight_bytes'] / 1e9:.0f} GB per token: "
      f"{h100['bandwidth_gbs'] * 1e9 / r16['weight_bytes']:.0f} tokens/s at best")

# %% [markdown]
# ## 5. A 24 GB card and a 128 GB laptop
# A 24 GB RTX 4090 cannot hold 65 GB of weights. Two ways out:
# * the smaller sibling, gpt-oss-20b, is 12.8 GiB with MXFP4 experts and fits;
# * keep the experts in the desktop's system RAM and everything else on the card. The card then
#   holds about 4 GB, but every token reads its 4 experts per layer (1.9 GB) over the ~90 GB/s of
#   dual-channel DDR5, and that becomes the ceiling.

# %%
r20 = estimate("gpt-oss-20b", recipe="experts-mxfp4", context=8192, hardware="rtx-4090")
v = r20["hardware"][0]
print(f"gpt-oss-20b: {r20['memory_bytes'] / 1e9:.1f} GB needed, fits on the 4090: {v['fits']}, "
      f"<= {v['decode_tokens_per_s_upper']:.0f} tokens/s")

gpu, ram = HARDWARE["rtx-4090"], HARDWARE["ddr5-desktop"]
on_card = r["weight_bytes"] - r["weight_bytes_by_component"]["experts"]
expert_bytes = r["weight_bytes_per_token_by_component"]["experts"]
card_bytes = r["bytes_per_token"] - expert_bytes
seconds = card_bytes / (gpu.bandwidth_gbs * 1e9) + expert_bytes / (ram.bandwidth_gbs * 1e9)
print(f"gpt-oss-120b with experts in RAM: {on_card / 1e9:.1f} GB on the card, "
      f"{r['weight_bytes_by_component']['experts'] / 1e9:.1f} GB in RAM, "
      f"<= {1 / seconds:.0f} tokens/s (bound by reading {expert_bytes / 1e9:.2f} GB of experts from RAM)")

m4 = estimate("gpt-oss-120b", recipe="experts-mxfp4", context=8192, hardware="m4-max")["hardware"][0]
print(f"M4 Max 128 GB: {m4['usable_gb']:.0f} GB usable by the GPU, fits: {m4['fits']}, "
      f"<= {m4['decode_tokens_per_s_upper']:.0f} tokens/s")

# %% [markdown]
# ## 6. Every precision against every device
# The same estimate for each storage format, as bars, against each device's usable memory:

# %%
path = plot_memory(r, os.path.join(OUT, "06_memory_per_precision.png"))
print("wrote", path)
print(report(r))

# %% [markdown]
# The command line does all of this for any preset or `config.json`:
#
#     minimoe estimate gpt-oss-120b --recipe experts-mxfp4 --hardware h100
#     minimoe estimate --config path/to/config.json --dtype q4_0 --context 32768 --json
#     minimoe estimate --compare
#
# docs/estimator.md writes out every formula.
