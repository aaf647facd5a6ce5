# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 01 · A forward pass through a Mixture-of-Experts transformer
#
# We follow a few tokens through a small MoE model, one layer function at a time, printing the
# shape of every array. Then we check that our hand-made walk gives exactly what
# `model(tokens)` gives, and count how many parameters each token actually touched.
#
# Run it as a script (`python tutorials/01_forward_pass.py`) or open it as a notebook with
# jupytext. Every function called here is a plain NumPy function you can step into with a
# debugger; set `MINIMOE_BACKEND=numpy` to make sure no compiled kernel is in the way.
#
# Shape legend: B batch, T time, C d_model, H heads, G kv heads, D head dim, F ffn width,
# E experts, K top-k, V vocab.

# %%
import numpy as np

import minimoe
from minimoe.nn import attention, embedding, linear, moe, norm, router
from minimoe.tokenizer import ByteTokenizer

tok = ByteTokenizer()
cfg = minimoe.Config.preset("tiny-moe", vocab_size=tok.vocab_size)
model = minimoe.Model(cfg, seed=0, tokenizer=tok)
print(cfg)
print(model)

# %% [markdown]
# The parameters are one flat dict of named arrays. The names are the checkpoint's names.

# %%
for name, arr in list(model.params.items())[:14]:
    print(f"{name:32s} {str(arr.shape):14s} {arr.dtype}")
print("...", len(model.params), "arrays in all")

# %% [markdown]
# ## 1. Tokens to vectors
# The byte tokenizer maps text to its UTF-8 bytes. The embedding looks up one row per token.

# %%
tokens = tok.encode("MoE!")[None]                           # (B=1, T=4)
x, _ = embedding.forward(tokens, model.params["embed.weight"])
print("tokens", tokens.shape, tokens, "-> x", x.shape)      # (1, 4) -> (1, 4, C)

# %% [markdown]
# ## 2. Attention
# RMSNorm, then causal grouped-query attention with rotary positions. Each of the H query heads
# shares its keys and values with the other heads of its group (G kv heads).

# %%
layer = 0
p = model.layer_params(layer)                                     # this layer's arrays, short names
h, _ = norm.forward(x, p["attn_norm"], cfg.norm_eps)         # (1, 4, C)
cos, sin = model.rotations(0, tokens.shape[1])                   # (T, D) rotations of positions 0..3
print("q proj", p["attn"]["q.weight"].shape, " k proj", p["attn"]["k.weight"].shape,
      f" H={cfg.n_heads} G={cfg.n_kv_heads} D={cfg.head_dim}")
a, acache = attention.forward(h, p["attn"], cfg, layer, cos, sin)
print("attention probabilities", acache["probs"].shape, "(B, G, R, T, S)")
print("the last token's attention over the 4 positions, head 0:", acache["probs"][0, 0, 0, -1].round(3))
x = x + a                                                    # residual: (1, 4, C)

# %% [markdown]
# ## 3. Routing
# The router scores all E experts for each token and keeps the top K.

# %%
h, _ = norm.forward(x, p["ffn_norm"], cfg.norm_eps)          # (1, 4, C)
hf = h.reshape(-1, cfg.d_model)                              # (N=4, C)
weights, experts, stats, _ = router.forward(hf, p["moe"]["router.weight"], None, cfg)
for t in range(hf.shape[0]):
    print(f"token {tok.decode(tokens[0, t:t+1])!r}: experts {experts[t]} with weights {weights[t].round(3)}")
print("tokens per expert:", stats["tokens_per_expert"], " probability mass per expert:", stats["prob_mass"].round(2))

# %% [markdown]
# ## 4. Experts
# Each chosen expert is a small SwiGLU FFN. The loop form below is the reference: for each
# expert, find the tokens that chose it and add its weighted output. Experts nobody chose are
# never touched.

# %%
y_loop, _ = moe.forward_loop(h, p["moe"], cfg)               # (1, 4, C)
y_fast, _, _ = moe.forward(h, p["moe"], cfg)                 # dispatch form: same numbers
print("loop vs dispatch max difference:", float(np.abs(y_loop - y_fast).max()))
x = x + y_loop

# %% [markdown]
# ## 5. The remaining layers and the head
# The other layers repeat the same steps. A final RMSNorm and the output head give logits over
# the V tokens. Our step-by-step walk must agree with `model(tokens)`.

# %%
for layer in range(1, cfg.n_layers):
    p = model.layer_params(layer)
    h, _ = norm.forward(x, p["attn_norm"], cfg.norm_eps)
    x = x + attention.forward(h, p["attn"], cfg, layer, cos, sin)[0]
    h, _ = norm.forward(x, p["ffn_norm"], cfg.norm_eps)
    x = x + moe.forward_loop(h, p["moe"], cfg)[0]
h, _ = norm.forward(x, model.params["norm.weight"], cfg.norm_eps)
logits, _ = linear.forward(h, model.head)                    # (1, 4, C) -> (1, 4, V)
print("logits", logits.shape, " max difference from model(tokens):",
      float(np.abs(logits - model(tokens)).max()))
assert np.allclose(logits, model(tokens), atol=1e-5)

# %% [markdown]
# ## 6. What one token touched
# Every token runs the attention, norms and head, but only K of the E experts in each MoE layer.
# So the parameters one token touches ("active") are far fewer than the model's total.

# %%
counts = model.param_counts()
print(f"total parameters        {counts['total']:>10,}")
print(f"active per token        {counts['active']:>10,}  (K/E = {cfg.top_k}/{cfg.n_experts} of the experts)")
for c, n in counts["by_component"].items():
    if n:
        print(f"  {c:<14} total {n:>8,}   active {counts['active_by_component'][c]:>8,}")

# %% [markdown]
# ## 7. Generation with a KV cache
# Decoding one new token only needs that token's query against the cached keys and values.
# The weights are random, so the text is gibberish; training (tutorial 03) fixes that.

# %%
out = model.generate(tok.encode("MoE"), max_new_tokens=12, temperature=0.0)
print(repr(tok.decode(out)))
