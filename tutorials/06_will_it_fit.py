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
OUT = os.environ.get("MINIMOE_TUTORIAL_OUT") or os.path.join(os.getcwd(), "minimoe_out")
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
# ## 7. Hybrid attention: Qwen3-Next's cache hardly grows
# Every attention layer above keeps K and V for every token it may attend to, so the KV cache
# grows with the context. The newer MoE models attack that growth in three ways:
# * **MLA** (DeepSeek-V3, Kimi K2) caches one compressed latent of 512 + 64 values per token per
#   layer instead of K and V for every head;
# * **chunked attention** (Llama 4) lets three layers in four attend only within chunks of 8,192
#   tokens, so those layers never hold more than 8,192 tokens;
# * **linear attention** (Qwen3-Next) replaces 36 of its 48 attention layers with Gated DeltaNet,
#   which keeps no KV cache at all, only a fixed-size state.
#
# A Gated DeltaNet head keeps a matrix S of Dk x Dv numbers. Each token decays it, recalls what S
# holds for its key, writes the correction, and reads its output, all in place:

# %%
import numpy as np

rng = np.random.default_rng(0)
Dk, Dv = 128, 128                               # Qwen3-Next's key and value head dims
S = np.zeros((Dk, Dv))                          # the whole memory of one head
for t in range(50 if FAST else 1000):           # any number of tokens
    k = rng.normal(size=Dk); k /= np.linalg.norm(k)   # (Dk,) keys are L2-normalised
    q, v = rng.normal(size=Dk), rng.normal(size=Dv)   # (Dk,), (Dv,)
    g, beta = 0.99, 0.5                         # decay and write strength (learned, per token)
    S = g * S                                   # (Dk, Dv) forget a little
    u = S.T @ k                                 # (Dv,) what S recalls for k
    S = S + np.outer(k, beta * (v - u))         # (Dk, Dv) write the correction
    o = S.T @ q                                 # (Dv,) the head's output
print(f"after {t + 1} tokens the state is still {S.shape}: {S.size:,} numbers per head")

# %% [markdown]
# Per layer that is Hv = 32 such matrices in float32, plus the last 4 inputs of the short causal
# convolution that runs over q, k and v (2*Hk*Dk + Hv*Dv = 8,192 channels, in bf16). The 12
# gated-attention layers still keep K and V, for 2 kv heads of 256:

# %%
qn = minimoe.Config.preset("qwen3-next-80b-a3b")
conv = (2 * qn.linear_num_key_heads * qn.linear_key_head_dim
        + qn.linear_num_value_heads * qn.linear_value_head_dim) * qn.linear_conv_kernel
S_per_layer = qn.linear_num_value_heads * qn.linear_key_head_dim * qn.linear_value_head_dim
state = len(qn.linear_layers) * (conv * 2 + S_per_layer * 4)
per_token = (qn.n_layers - len(qn.linear_layers)) * 2 * qn.n_kv_heads * qn.head_dim * 2
print(f"linear layers {len(qn.linear_layers)}, attention layers {qn.n_layers - len(qn.linear_layers)}")
print(f"state: {len(qn.linear_layers)} x ({conv:,} x 2 + {S_per_layer:,} x 4) = {state:,} bytes, at any context")
print(f"KV cache: 12 x 2 x {qn.n_kv_heads} x {qn.head_dim} x 2 = {per_token:,} bytes per token")
r = estimate("qwen3-next-80b-a3b", context=262144)
assert r["recurrent_state_bytes"] == state and r["kv_cache_bytes"] == 262144 * per_token
print(r["formulas"]["recurrent_state"])

# %% [markdown]
# The cache against the context, for four designs (bf16, batch 1). gpt-oss-120b grows in its 18
# full layers (the sliding ones stop at 128 tokens), DeepSeek-V3 in all 61 MLA layers, Llama 4
# Scout in its 12 NoPE layers once the chunks are full, Qwen3-Next in its 12 gated-attention
# layers, on top of a state that never changes:

# %%
contexts = [2**k for k in (10, 13, 15, 17, 18)] if FAST else [2**k for k in range(8, 19)]
designs = {"gpt-oss-120b": "gpt-oss-120b (GQA, half the layers slide)",
           "deepseek-v3": "DeepSeek-V3 (MLA)",
           "llama-4-scout": "Llama 4 Scout (chunked + NoPE)",
           "qwen3-next-80b-a3b": "Qwen3-Next (hybrid: KV + linear state)"}
cache = {n: [] for n in designs}
for n in designs:
    for c in contexts:
        e = estimate(n, context=c)
        cache[n].append((e["kv_cache_bytes"] + e["recurrent_state_bytes"]) / 1e9)
every_layer = [estimate(qn.replace(linear_layers=[]), context=c)["kv_cache_bytes"] / 1e9 for c in contexts]
print(f"{'context':>9}" + "".join(f"{n:>20}" for n in designs))
for i, c in enumerate(contexts):
    print(f"{c:>9,}" + "".join(f"{cache[n][i]:>17.3f} GB" for n in designs))

fig, ax = plt.subplots(figsize=(7, 4))
for n, label in designs.items():
    ax.plot(contexts, cache[n], marker="o", label=label)
ax.plot(contexts, every_layer, linestyle="--", color="grey", label="Qwen3-Next if all 48 layers were attention")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("context (tokens)")
ax.set_ylabel("KV cache + state, GB (bf16, batch 1)")
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(os.path.join(OUT, "06_kv_vs_context.png"), dpi=100)
plt.close(fig)

# %% [markdown]
# At 256k tokens Qwen3-Next keeps 6.4 GB, a quarter of what the same model would keep with full
# attention everywhere; its state (78 MB) is the flat part, larger than the KV cache below ~3k
# tokens and negligible beyond. The hybrid does not make the cache constant: its 12 attention
# layers still grow by 24,576 bytes per token (gpt-oss-120b: 36,864; Llama 4 Scout past 8k: 49,152;
# DeepSeek-V3: 70,272).
#
# ## 8. Two questions, answered
# "Can I run Llama 4 Scout on one H100 at 4 bits?" and "Qwen3-Next on my 64 GB laptop?":

# %%
scout = estimate("llama-4-scout", dtype="q4_0", hardware="h100", context=8192)
v = scout["hardware"][0]
print(f"Llama 4 Scout, q4_0, 8k context: {scout['memory_bytes'] / 1e9:.1f} GB -> fits on one H100: "
      f"{v['fits']}, <= {v['decode_tokens_per_s_upper']:.0f} tokens/s")
for c in (8192, 262144):
    e = estimate("qwen3-next-80b-a3b", dtype="q4_0", hardware="laptop-64gb", context=c)
    v = e["hardware"][0]
    print(f"Qwen3-Next, q4_0, {c:,} tokens: {e['memory_bytes'] / 1e9:.1f} GB -> fits in 64 GB: {v['fits']}, "
          f"<= {v['decode_tokens_per_s_upper']:.0f} tokens/s from DDR5")

# %% [markdown]
# ## 9. What the labs count
# Labs print "active parameters" with and without the embedding table and the head, and GLM-4.5's
# 355B includes a multi-token-prediction layer that transformers does not build. `--compare` tries
# every convention on our exact counts and names the one that gives each published figure:

# %%
from minimoe.inspect.published import table

print(table(["kimi-k2", "llama-4-scout", "qwen3-next-80b-a3b", "glm-4.5"]))

# %% [markdown]
# The command line does all of this for any preset or `config.json`:
#
#     minimoe estimate gpt-oss-120b --recipe experts-mxfp4 --hardware h100
#     minimoe estimate --config path/to/config.json --dtype q4_0 --context 32768 --json
#     minimoe estimate glm-4.5 --with-mtp
#     minimoe estimate --compare
#
# docs/estimator.md writes out every formula.
