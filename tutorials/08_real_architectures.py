# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 08 · Five real MoE architectures, side by side
#
# Mixtral, OLMoE, Qwen3-MoE, gpt-oss and DeepSeek-V3 are all "a decoder-only transformer whose
# FFNs are mixtures of experts". They differ in a handful of choices, and each choice is one
# field of `minimoe.Config`. Here we
#
# 1. write a tiny `config.json` for each family, in the family's own field names, and let
#    `minimoe.load`'s converter turn it into a Config: the differences become visible;
# 2. train the five tiny models on the same text, with the same budget, and send the same prompt
#    through each;
# 3. watch what each **router** does with the same token;
# 4. measure how much **KV cache** DeepSeek's multi-head latent attention (MLA) saves, and check
#    that its two forms (naive and absorbed) agree;
# 5. look at what gpt-oss's **sliding windows** and **attention sinks** do to the attention pattern.
#
# Real checkpoints load the same way: `minimoe.load("path/to/OLMoE-1B-7B")` reads the folder's
# config.json with these converters and its safetensors with the name maps of
# `minimoe/io/hf.py` (docs/checkpoints.md lists them). They are too big for a tutorial.
#
# Shape legend: B batch, T time, C d_model, H heads, D head dim, E experts, K top-k, V vocab.

# %%
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import minimoe
from minimoe.io.hf_config import config_from_hf
from minimoe.nn import mla
from minimoe.train.loop import TrainConfig, Trainer

FAST = os.environ.get("MINIMOE_FAST") == "1"
OUT = os.environ.get("MINIMOE_TUTORIAL_OUT") or os.path.join(os.getcwd(), "minimoe_out")
os.makedirs(OUT, exist_ok=True)

# %% [markdown]
# ## 1. Five config.json files
# Every model has C = 32, 2 or 3 layers, 4 query heads, 8 experts and top-2, so that what
# differs is only what the families do differently. The fields are the ones each family's
# transformers class reads; anything left out takes that class's default (gpt-oss's default
# YaRN, DeepSeek's default routed_scaling_factor 2.5, ...).

# %%
COMMON = dict(vocab_size=256, hidden_size=32, num_attention_heads=4, max_position_embeddings=64,
              num_experts_per_tok=2)
HF_CONFIGS = {
    "Mixtral": dict(COMMON, model_type="mixtral", num_hidden_layers=2, num_key_value_heads=2,
                    intermediate_size=32, num_local_experts=8, rope_theta=1e6),
    "OLMoE": dict(COMMON, model_type="olmoe", num_hidden_layers=2, intermediate_size=32, num_experts=8),
    "Qwen3-MoE": dict(COMMON, model_type="qwen3_moe", num_hidden_layers=2, num_key_value_heads=2,
                      head_dim=8, intermediate_size=64, moe_intermediate_size=32, num_experts=8,
                      norm_topk_prob=True),
    "gpt-oss": dict(COMMON, model_type="gpt_oss", num_hidden_layers=2, num_key_value_heads=2, head_dim=8,
                    intermediate_size=32, num_local_experts=8, sliding_window=8),
    "DeepSeek-V3": dict(COMMON, model_type="deepseek_v3", num_hidden_layers=3, num_key_value_heads=4,
                        intermediate_size=64, moe_intermediate_size=16, n_routed_experts=8, n_group=4,
                        topk_group=2, n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=16,
                        kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=8),
}
configs = {name: config_from_hf(d, source=name) for name, d in HF_CONFIGS.items()}

FIELDS = ["attention", "qk_norm", "qkv_bias", "attn_sinks", "sliding_window", "router", "router_renorm",
          "router_bias", "router_scale", "router_groups", "router_correction_bias", "n_shared_experts",
          "dense_layers", "ffn_act", "expert_bias"]
print(f"{'':24}" + "".join(f"{n:>13}" for n in configs))
for f in FIELDS:
    print(f"{f:24}" + "".join(f"{str(getattr(c, f)):>13}" for c in configs.values()))

# %% [markdown]
# Read the table by rows:
# * **attention**: only DeepSeek differs (`mla`, section 4). OLMoE normalises the whole q and k
#   projections (`full`), Qwen3 each head (`head`). gpt-oss adds biases and sinks, and slides a
#   window over every other layer (section 5).
# * **router**: Mixtral, OLMoE and Qwen3 take a softmax over all experts and keep the top K;
#   Mixtral and Qwen3 rescale the K to sum to 1, OLMoE does not. gpt-oss keeps the K largest
#   *logits* (with a bias) and softmaxes over those K only. DeepSeek scores each expert with a
#   sigmoid, chooses inside its best groups with a correction bias, and scales the weights by 2.5.
# * **FFN**: gpt-oss's experts have biases and a clamped SwiGLU; DeepSeek adds a shared expert
#   and keeps its first layer dense.

# %% [markdown]
# ## 2. Same data, same budget, same prompt
# Each model trains on Python's reference documentation (it ships with Python) with the same
# seed, batches and number of steps. Fast mode (the tests) trains for a few steps only.

# %%
steps = 4 if FAST else 400
models, losses = {}, {}
for name, cfg in configs.items():
    overrides = {k: v for k, v in cfg.to_dict().items() if k not in ("vocab_size", "name")}
    tc = TrainConfig(preset="tiny-moe", model=overrides, data="pydoc", max_iters=steps, batch_size=8,
                     block_size=32, lr=3e-3, warmup_iters=min(20, steps), eval_interval=steps,
                     eval_iters=2 if FAST else 20, ckpt_interval=0, sample_tokens=0,
                     out=os.path.join(OUT, "08_runs", name))
    trainer = Trainer.new(tc, verbose=False)
    trainer.run()
    models[name], losses[name] = trainer.model, trainer.history[-1]["val_loss"]

prompt = "def __init__(self"
print(f"{'model':<12}{'params':>9}{'active':>9}{'val loss':>10}   continuation of {prompt!r}")
for name, m in models.items():
    c = m.param_counts()
    ids = np.asarray(m.tokenizer.encode(prompt))
    text = m.tokenizer.decode(m.generate(ids, 24 if not FAST else 8)[len(ids):])
    print(f"{name:<12}{c['total']:>9,}{c['active']:>9,}{losses[name]:>10.3f}   {text!r}")

# %% [markdown]
# At this size and budget the five are close: the families differ in how they spend memory and
# compute at scale, not in what a 50K-parameter model can learn in a few hundred steps.

# %% [markdown]
# ## 3. What each router does with the same token
# We run the prompt through each model and look at the last MoE layer's router for the prompt's
# last token: the scores it ranks the experts by, the K it chooses, and the weights it gives them.

# %%
fig, axes = plt.subplots(1, 5, figsize=(18, 3.2))
for ax, (name, m) in zip(axes, models.items()):
    ids = np.asarray(m.tokenizer.encode(prompt))
    _, cache = m.forward(ids[None])                                  # (1, T) -> routing per layer
    stats = [s for s in cache["routing"] if s is not None][-1]       # the last MoE layer
    cfg = m.config
    logits = stats["logits"][-1]                                     # (E,) the last token
    if cfg.router == "topk_softmax":
        ranked, what = logits, "logits (bias included)"
    elif cfg.router == "sigmoid_topk":
        ranked, what = 1 / (1 + np.exp(-logits)), "sigmoid(logits)"
    else:
        ranked, what = stats["probs"][-1], "softmax(logits)"
    chosen, weights = stats["experts"][-1], stats["weights"][-1]    # (K,), (K,)
    colors = ["tab:orange" if e in chosen else "tab:gray" for e in range(cfg.n_experts)]
    ax.bar(range(cfg.n_experts), ranked, color=colors)
    if cfg.router_groups > 1:                                        # DeepSeek's groups
        for g in range(1, cfg.router_groups):
            ax.axvline(g * cfg.n_experts / cfg.router_groups - 0.5, color="k", lw=0.5, ls=":")
    ax.set_title(f"{name}\nweights {np.round(weights, 2)} (sum {weights.sum():.2f})", fontsize=9)
    ax.set_xlabel(f"expert; bars: {what}", fontsize=8)
    print(f"{name:<12} chooses {sorted(chosen.tolist())} with weights summing to {weights.sum():.3f}")
fig.tight_layout()
fig.savefig(os.path.join(OUT, "08_routers.png"), dpi=100)

# %% [markdown]
# The sums tell the rules apart: 1 for Mixtral and Qwen3 (renormalised) and for gpt-oss (a
# softmax over the K), less than 1 for OLMoE (the K probabilities as they are), 2.5 for DeepSeek
# (renormalised, then routed_scaling_factor). DeepSeek's dotted lines are its groups: a token
# first keeps its 2 best groups (ranked by the sum of their two best scores), then its 2 best
# experts inside them.
#
# DeepSeek-V3's correction bias chooses but never weighs. We nudge one unchosen expert's bias up
# and route the same token again: the choice changes, and the chosen experts' weights are still
# their sigmoid scores (renormalised, times 2.5); the bias appears in neither.

# %%
ds = models["DeepSeek-V3"]
layer = ds.config.n_layers - 1
bias = ds.params[f"layers.{layer}.moe.router.e_score_correction_bias"]
ids = np.asarray(ds.tokenizer.encode(prompt))
before = [s for s in ds.forward(ids[None])[1]["routing"] if s is not None][-1]
allowed = set(before["experts"][-1].tolist())
target = next(e for e in range(ds.config.n_experts) if e not in allowed)
bias[target] = 1.0                                     # in place: the model reads it at every call
after = [s for s in ds.forward(ids[None])[1]["routing"] if s is not None][-1]
bias[target] = 0.0
s = 1 / (1 + np.exp(-after["logits"][-1]))
expected = 2.5 * s[after["experts"][-1]] / s[after["experts"][-1]].sum()
print(f"bias 0 on expert {target}: experts {sorted(before['experts'][-1].tolist())}")
print(f"bias 1 on expert {target}: experts {sorted(after['experts'][-1].tolist())}, weights "
      f"{np.round(after['weights'][-1], 3)} = 2.5 * renormalised sigmoid scores {np.round(expected, 3)}")
assert target in after["experts"][-1] and np.allclose(after["weights"][-1], expected, atol=1e-5)

# %% [markdown]
# ## 4. Multi-head latent attention: what the KV cache keeps
# Grouped-query attention caches a key and a value per kv head: 2·G·D numbers per token and
# layer. MLA caches one latent vector c (kv_lora_rank) and one rotary key (qk_rope_head_dim)
# shared by every head, and decompresses each head's key and value from c when it attends.
# The tiny models, after the prompt:

# %%
print(f"{'model':<12}{'cached numbers per token and layer':>36}{'KV bytes after the prompt':>28}")
for name, m in models.items():
    kv = m.new_kv_cache(1, 32)
    m.forward(np.asarray(m.tokenizer.encode(prompt))[None], kv)
    per = kv.nbytes // (kv.length * m.config.n_layers * 4)          # float32
    print(f"{name:<12}{per:>36}{kv.nbytes:>28,}")

# %% [markdown]
# At real sizes the gap is the point. `minimoe.estimate` counts the cache of the released
# configs; "DeepSeek-V3 as MHA" is the same model if it cached every head's key and value.

# %%
from minimoe.inspect.estimate import kv_values_per_token

REAL = {"Mixtral 8x7B": "mixtral-8x7b", "OLMoE 1B-7B": "olmoe-1b-7b", "Qwen3 30B-A3B": "qwen3-30b-a3b",
        "gpt-oss 120B": "gpt-oss-120b", "DeepSeek-V3": "deepseek-v3"}
per_token = {}
for label, preset in REAL.items():
    cfg = minimoe.Config.preset(preset)
    per_token[label] = kv_values_per_token(cfg) * cfg.n_layers * 2          # bf16 bytes per token
v3 = minimoe.Config.preset("deepseek-v3")
per_token["DeepSeek-V3 as MHA"] = v3.n_heads * (v3.head_dim + v3.v_head_dim) * v3.n_layers * 2
for label, b in per_token.items():
    print(f"{label:<20}{b / 1024:>10.1f} KiB per token (bf16, all layers)")
fig, ax = plt.subplots(figsize=(8, 3))
ax.barh(list(per_token), [b / 1024 for b in per_token.values()], color="tab:blue")
ax.set_xscale("log")
ax.set_xlabel("KV cache per token, KiB (bf16, log scale)")
fig.tight_layout()
fig.savefig(os.path.join(OUT, "08_kv_cache.png"), dpi=100)

# %% [markdown]
# (gpt-oss's sliding layers stop growing at 128 tokens, so past that its cache grows at half this
# rate.) DeepSeek-V3 keeps 576 numbers per token and layer; as plain multi-head attention its 128 heads
# would keep 128 × (192 + 128) = 40,960: 71 times more.
#
# The cache stores latents, so decoding uses MLA's *absorbed* form (minimoe/nn/mla.py): the key
# decompression is folded into the query (q_nope W_uk · c) and the value decompression into the
# output ((P c) W_uv^T), which makes it multi-*query* attention over the cached latents. Training
# uses the naive form, which decompresses k and v explicitly. They compute the same function:

# %%
p = ds.layer_params(1)["attn"]
h = np.random.default_rng(0).normal(size=(1, 12, ds.config.d_model)).astype(np.float32)
cos, sin = ds.rotations(0, 12)
naive, _ = mla.forward(h, p, ds.config, 1, cos, sin)
absorbed, _ = mla.forward(h, p, ds.config, 1, cos, sin, absorb=True)
print(f"max |naive - absorbed| = {np.abs(naive - absorbed).max():.2e} (float32)")
assert np.abs(naive - absorbed).max() < 1e-5

# %% [markdown]
# ## 5. Sliding windows and sinks (gpt-oss)
# gpt-oss's even layers attend only to the last `sliding_window` = 8 positions; its odd layers to
# everything before. Every head also has a learned *sink* logit: it joins the softmax like one
# more key whose value is zero, so a head can put probability on "nothing" instead of spreading it
# over keys it does not need. We run a 24-character prompt and plot head 0's attention in both
# layers, with the sink's share as an extra column.

# %%
oss = models["gpt-oss"]
text = "for i in range(10): x = i"
ids = np.asarray(oss.tokenizer.encode(text))[:24]
_, cache = oss.forward(ids[None])                        # training mode: the caches keep the probs
fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
for ax, layer in zip(axes, range(2)):
    attn = cache["layers"][layer][1]                     # (norm, attention, norm, ffn) caches
    probs = attn["probs"].reshape(oss.config.n_heads, len(ids), len(ids))   # (B,G,R,T,S) -> (H, T, S)
    sink = attn["sink_probs"].reshape(oss.config.n_heads, len(ids))         # (H, T)
    grid = np.concatenate([probs[0], sink[0][:, None]], axis=1)             # (T, S + 1)
    ax.imshow(grid, cmap="viridis", vmin=0, vmax=1)
    ax.axvline(len(ids) - 0.5, color="w", lw=1)
    window = oss.config.window(layer)
    ax.set_title(f"layer {layer}: " + (f"sliding window {window}" if window else "full causal"), fontsize=10)
    ax.set_xlabel("key position  |  last column: the sink")
    ax.set_ylabel("query position")
    beyond = np.triu(np.ones_like(probs[0]), 1) + (np.tril(np.ones_like(probs[0]), -window) if window else 0)
    print(f"layer {layer} ({'window ' + str(window) if window else 'full'}): probability outside the "
          f"allowed keys {float((probs * beyond).sum()):.1e}; mean sink share per head "
          f"{np.round(sink.mean(axis=1), 3)}")
fig.tight_layout()
fig.savefig(os.path.join(OUT, "08_attention_pattern.png"), dpi=100)

# %% [markdown]
# The sliding layer's band is the window: no query sees more than 8 keys. The sink column takes
# whatever share a head's sink logit wins against that row's scores. Turning one head's sink up
# moves its probability from the keys to "nothing", and the head's output shrinks with it:

# %%
p = oss.layer_params(0)
sinks = p["attn"]["sinks"]
saved = sinks.copy()
shares = []
values = np.linspace(-4, 8, 7)
for value in values:
    sinks[0] = value                                     # in place: the model reads it at every call
    _, c = oss.forward(ids[None])
    shares.append(float(c["layers"][0][1]["sink_probs"].reshape(oss.config.n_heads, -1)[0].mean()))
sinks[:] = saved
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(values, shares, "o-")
ax.set_xlabel("head 0's sink logit")
ax.set_ylabel("mean probability on the sink")
fig.tight_layout()
fig.savefig(os.path.join(OUT, "08_sinks.png"), dpi=100)
print("sink logit -> mean sink share:", ", ".join(f"{v:+.0f}: {s:.2f}" for v, s in zip(values, shares)))
assert shares == sorted(shares)

# %% [markdown]
# ## What to read next
# * `minimoe/nn/mla.py`: latent attention, both forms, and its backward.
# * `minimoe/nn/router.py`: the four routing rules, DeepSeek's groups and correction bias.
# * `minimoe/nn/attention.py`: sinks and sliding windows in `attend`.
# * `minimoe/io/hf.py` and docs/checkpoints.md: each family's tensor names, and the options
#   minimoe reads from each config.json.
