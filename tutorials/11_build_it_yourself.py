# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 11 · Build it yourself: attention, a router and an MoE layer from empty functions
#
# In the spirit of nanoGPT: you write the model. Each step below is one function to write, with
# its shapes and equations, followed by a check against minimoe's own layer. At the end you train
# a model of your own configuration and run it through *your* forward pass.
#
# **How to use this file.** This copy holds the solutions between `# BEGIN SOLUTION` and
# `# END SOLUTION`. Make your blank copy with
#
#     python -m minimoe.exercises.blank tutorials/11_build_it_yourself.py my_11.py
#
# which replaces every solution with `raise NotImplementedError`. The blank copy still runs top
# to bottom: a check whose function is not written yet says so and lends you minimoe's version,
# so the later steps (and the training run) work while you write the earlier ones.
#
# **Objectives:** write causal grouped-query attention with RoPE, top-k routing, a SwiGLU expert
# and the expert-loop MoE layer; assemble them into a whole forward pass that matches
# `model(tokens)` to float32 rounding.
#
# **Prerequisites:** tutorial 01 (the forward pass, read), tutorial 02 helps for the maths.
#
# Shape legend: B batch, T time, C width, H heads, G kv heads, R = H/G, D head dim, F expert
# width, E experts, K top-k, N = B*T tokens, V vocab.

# %%
import os

import numpy as np

import minimoe
from minimoe.nn import attention, ffn, moe, norm, router
from minimoe.nn.rope import rotate

FAST = os.environ.get("MINIMOE_FAST") == "1"
OUT = os.environ.get("MINIMOE_TUTORIAL_OUT") or os.path.join(os.getcwd(), "minimoe_out")
os.makedirs(OUT, exist_ok=True)

cfg = minimoe.Config.preset("tiny-moe")                      # 2 layers, C 32, H 4, G 2, D 8, E 4, K 2
model = minimoe.Model(cfg, seed=0)
rng = np.random.default_rng(0)
SCORE = {}


def check(name, mine, reference, *args, atol=1e-5):
    """Run your function and minimoe's on the same inputs; compare every output. If yours is not
    written yet, say so and return minimoe's, so the notebook goes on."""
    want = reference(*args)
    try:
        got = mine(*args)
    except NotImplementedError:
        print(f"[ ] {name}: not written yet; using minimoe's version to go on")
        SCORE[name] = False
        return want
    wants, gots = (want, got) if isinstance(want, tuple) else ((want,), (got,))
    ok = len(wants) == len(gots) and all(
        np.shape(g) == np.shape(w) and np.allclose(g, w, atol=atol) for g, w in zip(gots, wants))
    diff = max((float(np.max(np.abs(np.asarray(g) - w))) for g, w in zip(gots, wants)
                if np.shape(g) == np.shape(w)), default=float("nan"))
    print(f"[{'x' if ok else '!'}] {name}: {'matches minimoe' if ok else 'DIFFERS from minimoe'} "
          f"(max |difference| {diff:.1e})")
    SCORE[name] = ok
    return got if ok else want


# %% [markdown]
# ## 1. RMSNorm
#
# $y = x / \sqrt{\mathrm{mean}(x^2) + \epsilon} \cdot w$, over the last axis.

# %%
def my_rmsnorm(x, w, eps):
    """x (..., C), w (C,) -> (..., C)."""
    # BEGIN SOLUTION
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w
    # END SOLUTION


x = rng.standard_normal((2, 5, cfg.d_model)).astype(np.float32)          # (B, T, C)
p0 = model.layer_params(0)
check("rmsnorm", my_rmsnorm, lambda x, w, e: norm.forward(x, w, e)[0], x, p0["attn_norm"], cfg.norm_eps)

# %% [markdown]
# ## 2. Causal attention
#
# For each head: scores = q k^T / sqrt(D), minus infinity above the diagonal (a token sees only
# itself and the past), softmax over the keys, then a weighted sum of the values. With grouped
# queries, the H query heads share G key/value heads: query head h uses kv head h // R.

# %%
def my_causal_attention(q, k, v):
    """q (B, H, T, D), k and v (B, G, T, D) -> y (B, H, T, D)."""
    # BEGIN SOLUTION
    B, H, T, D = q.shape
    R = H // k.shape[1]
    k = np.repeat(k, R, axis=1)                              # (B, G, T, D) -> (B, H, T, D)
    v = np.repeat(v, R, axis=1)
    scores = q @ k.swapaxes(-1, -2) / np.sqrt(D)             # (B, H, T, D) @ (B, H, D, T) -> (B, H, T, T)
    scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)               # (B, H, T, T)
    return probs @ v                                         # (B, H, T, T) @ (B, H, T, D) -> (B, H, T, D)
    # END SOLUTION


H, G, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
q = rng.standard_normal((2, H, 5, D)).astype(np.float32)
k, v = (rng.standard_normal((2, G, 5, D)).astype(np.float32) for _ in range(2))
check("causal attention", my_causal_attention, lambda q, k, v: attention.attend(q, k, v, 0, None)[0], q, k, v)

# %% [markdown]
# ## 3. The attention layer
#
# Project x to q (H heads), k and v (G heads) with the layer's `q.weight`, `k.weight`, `v.weight`
# (each stored (out, in): `x @ W.T`), rotate q and k by their positions (`rotate(q, cos, sin)`, as
# tutorial 02 derived), attend, merge the heads and project with `o.weight`.

# %%
def my_attention_layer(x, p, c, cos, sin):
    """x (B, T, C), p: this layer's attention arrays, c: the Config (n_heads, n_kv_heads, head_dim)
    -> (B, T, C)."""
    # BEGIN SOLUTION
    B, T, C = x.shape
    H, G, D = c.n_heads, c.n_kv_heads, c.head_dim
    q = (x @ p["q.weight"].T).reshape(B, T, H, D).transpose(0, 2, 1, 3)   # (B, H, T, D)
    k = (x @ p["k.weight"].T).reshape(B, T, G, D).transpose(0, 2, 1, 3)   # (B, G, T, D)
    v = (x @ p["v.weight"].T).reshape(B, T, G, D).transpose(0, 2, 1, 3)   # (B, G, T, D)
    y = my_causal_attention(rotate(q, cos, sin), rotate(k, cos, sin), v)  # (B, H, T, D)
    return y.transpose(0, 2, 1, 3).reshape(B, T, H * D) @ p["o.weight"].T  # (B, T, C)
    # END SOLUTION


cos, sin = model.rotations(0, 5)                             # (T, D)
check("attention layer", my_attention_layer,
      lambda x, p, c, cs, sn: attention.forward(x, p, c, 0, cs, sn)[0], x, p0["attn"], cfg, cos, sin)

# %% [markdown]
# ## 4. The router
#
# Mixtral's rule: probs = softmax(x W_r^T) over the E experts, keep the K largest (largest
# first), renormalise those K weights to sum to 1.

# %%
def my_router(x, w, K):
    """x (N, C), w (E, C) -> (weights (N, K), experts (N, K) int)."""
    # BEGIN SOLUTION
    logits = x @ w.T                                         # (N, E)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    experts = np.argsort(-probs, axis=-1, kind="stable")[:, :K]   # (N, K)
    g = np.take_along_axis(probs, experts, axis=-1)          # (N, K)
    return g / g.sum(axis=-1, keepdims=True), experts
    # END SOLUTION


xf = x.reshape(-1, cfg.d_model)                              # (N, C)
check("router", my_router, lambda x, w, K: router.forward(x, w, None, cfg)[:2], xf,
      p0["moe"]["router.weight"], cfg.top_k)

# %% [markdown]
# ## 5. One expert: a SwiGLU feed-forward network
#
# $\mathrm{expert}(x) = (\mathrm{silu}(x W_g^T) \odot x W_u^T) W_d^T$, with
# $\mathrm{silu}(a) = a\,\sigma(a)$.

# %%
def my_expert(x, w_gate, w_up, w_down):
    """x (n, C), w_gate and w_up (F, C), w_down (C, F) -> (n, C)."""
    # BEGIN SOLUTION
    a = x @ w_gate.T                                         # (n, F)
    return (a / (1 + np.exp(-a)) * (x @ w_up.T)) @ w_down.T  # (n, F) -> (n, C)
    # END SOLUTION


pm = p0["moe"]
check("expert (SwiGLU)", my_expert, lambda x, g, u, d: ffn.forward(x, g, u, d)[0], xf,
      pm["experts.gate"][0], pm["experts.up"][0], pm["experts.down"][0])

# %% [markdown]
# ## 6. The MoE layer, as a loop over experts
#
# mistral-src's honest form: route, then for each expert find the (token, slot) pairs that chose
# it with `np.where(experts == e)`, run the expert on those tokens only, and add its output times
# the routing weight. Experts nobody chose cost nothing.

# %%
def my_moe(x, p, K):
    """x (B, T, C), p: the layer's MoE arrays -> (B, T, C)."""
    # BEGIN SOLUTION
    B, T, C = x.shape
    xf = x.reshape(-1, C)                                    # (N, C)
    weights, experts = my_router(xf, p["router.weight"], K)  # (N, K), (N, K)
    y = np.zeros_like(xf)
    for e in range(p["experts.gate"].shape[0]):
        tokens, slot = np.where(experts == e)                # who chose e, in which of their K slots
        if len(tokens):
            out = my_expert(xf[tokens], p["experts.gate"][e], p["experts.up"][e], p["experts.down"][e])
            y[tokens] += weights[tokens, slot, None] * out   # (n_e, 1) * (n_e, C)
    return y.reshape(B, T, C)
    # END SOLUTION


check("MoE layer", my_moe, lambda x, p, K: moe.forward(x, p, cfg)[0], x, pm, cfg.top_k)

# %% [markdown]
# ## 7. The whole forward pass
#
# Embedding lookup, then per layer x += attention(rmsnorm(x)) and x += moe(rmsnorm(x)), a final
# rmsnorm and the head. Use your functions; `model.layer_params(i)` gives layer i's arrays.

# %%
def my_forward(model, tokens):
    """tokens (B, T) int -> logits (B, T, V)."""
    # BEGIN SOLUTION
    c, P = model.config, model.params
    x = P["embed.weight"][tokens]                            # (B, T, C)
    cos, sin = model.rotations(0, tokens.shape[1])
    for i in range(c.n_layers):
        p = model.layer_params(i)
        x = x + my_attention_layer(my_rmsnorm(x, p["attn_norm"], c.norm_eps), p["attn"], c, cos, sin)
        x = x + my_moe(my_rmsnorm(x, p["ffn_norm"], c.norm_eps), p["moe"], c.top_k)
    return my_rmsnorm(x, P["norm.weight"], c.norm_eps) @ model.head.T   # (B, T, C) -> (B, T, V)
    # END SOLUTION


tokens = rng.integers(0, cfg.vocab_size, (2, 7))
check("whole forward pass", my_forward, lambda m, t: m(t), model, tokens, atol=1e-4)

# %% [markdown]
# ## 8. Train a model of your own, and run it through your forward pass
#
# Choose a configuration: experts, top-k, width. minimoe's trainer computes the gradients (the
# backward passes are the exercises of `minimoe grade`). Then your forward pass must give the
# trained model's logits, and you can sample from it with a plain loop (no KV cache: every step
# re-reads the whole sequence, as picoGPT does).

# %%
from minimoe.train.loop import TrainConfig, Trainer

MY_MODEL = dict(n_experts=8, top_k=2, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, d_expert=64)
steps = 40 if FAST else 1500
tc = TrainConfig(preset="tiny-moe", model=MY_MODEL, batch_size=8, block_size=64, max_iters=steps,
                 eval_interval=max(10, steps // 5), eval_iters=2, ckpt_interval=0, sample_tokens=0,
                 lr=3e-3, warmup_iters=10, seed=0, threads=1, out=os.path.join(OUT, "11_my_model"))
trainer = Trainer.new(tc, verbose=False)
trainer.run()
mine = trainer.model
print(f"my model: {mine.param_counts()['total']:,} parameters, val loss after {steps} steps "
      f"{trainer.history[-1]['val_loss']:.3f}")

val = trainer.data.val[None, :64]                            # (1, T)
logits = check("my forward pass on my trained model", my_forward, lambda m, t: m(t), mine, val, atol=1e-4)

forward = my_forward if SCORE["my forward pass on my trained model"] else (lambda m, t: m(t))
seq = list(trainer.data.tokenizer.encode("def "))
for _ in range(20 if FAST else 60):                          # greedy, recomputing everything each step
    ctx = np.array(seq[-mine.config.max_seq_len:])[None]     # (1, T)
    seq.append(int(forward(mine, ctx)[0, -1].argmax()))
print(repr(trainer.data.tokenizer.decode(np.array(seq))))

# %% [markdown]
# ## Your score

# %%
done = sum(SCORE.values())
print(f"{done}/{len(SCORE)} steps match minimoe")
for name, ok in SCORE.items():
    print(f"  [{'x' if ok else ' '}] {name}")
