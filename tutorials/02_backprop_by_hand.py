# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 02 · Backpropagation by hand, one layer at a time
#
# minimoe has no autograd. Every layer in `minimoe/nn/` has a `forward` that returns its output
# and a *cache* (whatever the backward pass will need), and beside it a `backward` that takes the
# gradient of the loss with respect to the output and returns the gradients with respect to the
# inputs and parameters. This is the style of the cs231n assignments and of llm.c:
#
# ```python
# y, cache = linear.forward(x, W, b)
# dx, dW, db = linear.backward(dy, cache)
# ```
#
# A hand-written gradient is only as good as its check. For each layer we (1) write down the
# derivative, (2) read the code that implements it, and (3) compare it with a finite difference
# in float64, asking for a relative error below 1e-6. At the end we check the whole model,
# every parameter, including the router and its two auxiliary losses.
#
# Shape legend: B batch, T time, C d_model, H heads, G kv heads, D head dim, F ffn width,
# E experts, K top-k, V vocab, N = B*T tokens.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

import minimoe
from minimoe.nn import attention, ffn, linear, loss, moe, norm, rope, router
from minimoe.train import losses
from minimoe.train.gradcheck import check_gradients, directional_derivative

FAST = os.environ.get("MINIMOE_FAST") == "1"
OUT = os.environ.get("MINIMOE_TUTORIAL_OUT") or os.path.join(os.getcwd(), "minimoe_out")
os.makedirs(OUT, exist_ok=True)
rng = np.random.default_rng(0)
F64 = np.float64


def report(name, errors):
    """Print each array's relative error and whether it passes (< 1e-6)."""
    worst = max(errors.values())
    print(f"{name}: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
          + ("   OK" if worst < 1e-6 else "   NOT OK"))
    assert worst < 1e-6, f"{name}: relative error {worst:.2e}"


# %% [markdown]
# ## 0. How to check a gradient
#
# Take a scalar loss $L(\theta)$ and a random unit direction $u$. The analytic directional
# derivative is $g \cdot u$ with $g$ our hand-written gradient. The numeric one is a finite
# difference along $u$. The usual central difference
# $\frac{L(\theta + hu) - L(\theta - hu)}{2h}$ has a truncation error $O(h^2)$, and it has a
# rounding error of about $\epsilon |L| / h$. Make $h$ too large and truncation dominates. Make
# it too small and rounding does. The plot shows both regimes. minimoe uses the five-point
# stencil, whose truncation error is $O(h^4)$, with $h = 10^{-3}$ in float64. There the
# total error is near $10^{-12}$. In float32 no choice of $h$ reaches $10^{-6}$, so every check
# runs in float64.

# %%
x0 = rng.normal(size=(4, 6))
W0 = rng.normal(size=(3, 6))
R0 = rng.normal(size=(4, 3))


def f_linear(W, x):                                    # a smooth, slightly nonlinear scalar
    return float(np.sum(np.tanh(x @ W.T) * R0))


def grad_linear(W, x):                                 # d/dW by hand: tanh' = 1 - tanh^2
    dy = (1 - np.tanh(x @ W.T) ** 2) * R0              # (4, 3)
    return dy.T @ x                                    # (3, 6)


u = rng.normal(size=W0.shape)
u /= np.linalg.norm(u)
hs = np.logspace(-12, -1, 45)
curves = {}
for dtype in (np.float64, np.float32):
    W, x = W0.astype(dtype), x0.astype(dtype)
    exact = float(np.sum(grad_linear(W0, x0) * u))
    uu = u.astype(dtype)
    two, five = [], []
    for h in hs:
        Lp, Lm = f_linear(W + dtype(h) * uu, x), f_linear(W - dtype(h) * uu, x)
        Lp2, Lm2 = f_linear(W + dtype(2 * h) * uu, x), f_linear(W - dtype(2 * h) * uu, x)
        two.append(abs((Lp - Lm) / (2 * h) - exact) / abs(exact))
        five.append(abs((Lm2 - 8 * Lm + 8 * Lp - Lp2) / (12 * h) - exact) / abs(exact))
    curves[np.dtype(dtype).name] = (two, five)

fig, ax = plt.subplots(figsize=(6.5, 4))
for name, (two, five) in curves.items():
    ax.loglog(hs, np.maximum(two, 1e-17), "--", label=f"{name}, central difference")
    ax.loglog(hs, np.maximum(five, 1e-17), "-", label=f"{name}, five-point stencil")
ax.axhline(1e-6, color="gray", lw=0.8)
ax.axvline(1e-3, color="gray", lw=0.8, ls=":")
ax.set_xlabel("step h")
ax.set_ylabel("relative error of the numeric derivative")
ax.set_title("Finite differences: truncation (right) vs rounding (left)")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(OUT, "02_finite_difference_error.png"), dpi=110)
best = {k: min(v[1]) for k, v in curves.items()}
print("best five-point error: float64 %.1e, float32 %.1e" % (best["float64"], best["float32"]))

# %% [markdown]
# `minimoe.train.gradcheck.check_gradients(loss, arrays, grads)` does this for one array at a
# time. It uses a random direction over the whole array, so one check covers every entry.
# It returns the relative error per array. To test a layer, use the loss $L = \sum y \odot R$
# with a fixed random $R$. Then $\partial L / \partial y = R$, and we feed $R$ to the backward.
#
# ## 1. Linear: $y = x W^\top + b$
#
# Each output is $y_{no} = \sum_i x_{ni} W_{oi} + b_o$, so
#
# $$\frac{\partial L}{\partial x} = \frac{\partial L}{\partial y} W, \qquad
#   \frac{\partial L}{\partial W} = \Big(\frac{\partial L}{\partial y}\Big)^{\!\top} x, \qquad
#   \frac{\partial L}{\partial b} = \sum_n \frac{\partial L}{\partial y_n}.$$
#
# In `minimoe/nn/linear.py` these are `dy2 @ w`, `dy2.T @ x` and `dy2.sum(axis=0)`, over all
# leading axes flattened into rows.

# %%
x, W, b = rng.normal(size=(2, 5, 6)), rng.normal(size=(4, 6)), rng.normal(size=4)
R = rng.normal(size=(2, 5, 4))
y, cache = linear.forward(x, W, b)
dx, dW, db = linear.backward(R, cache)
report("linear", check_gradients(lambda: float(np.sum(linear.forward(x, W, b)[0] * R)),
                                 {"x": x, "W": W, "b": b}, {"x": dx, "W": dW, "b": db}))

# %% [markdown]
# ## 2. RMSNorm: $y = \hat x \odot w$, with $\hat x = x \cdot r$ and $r = (\mathrm{mean}(x^2) + \epsilon)^{-1/2}$
#
# The weight is easy: $\partial L/\partial w = \sum_n \partial L/\partial y_n \odot \hat x_n$.
# For $x$, write $g = \partial L/\partial y \odot w$ (the gradient reaching $\hat x$). Then
# $r$ depends on every entry of the row, since $\partial r / \partial x_j = -r^3 x_j / C$. This gives
#
# $$\frac{\partial L}{\partial x} = r\,\big(g - \hat x \cdot \mathrm{mean}(g \odot \hat x)\big).$$
#
# The second term removes from $g$ its component along $\hat x$: scaling $x$ does not change
# $\hat x$, so the gradient has no component in that direction.

# %%
x, w, R = rng.normal(size=(3, 4, 8)), rng.normal(size=8), rng.normal(size=(3, 4, 8))
y, cache = norm.forward(x, w, 1e-5)
dx, dw = norm.backward(R, cache)
report("rmsnorm", check_gradients(lambda: float(np.sum(norm.forward(x, w, 1e-5)[0] * R)),
                                  {"x": x, "w": w}, {"x": dx, "w": dw}))
print("largest |<dx, x>| over the rows (0, but for eps):", float(np.abs(np.sum(dx * x, axis=-1)).max()))

# %% [markdown]
# ## 3. Cross-entropy: $L = \frac1N \sum_n \big(\log\sum_v e^{z_{nv}} - z_{n,t_n}\big)$
#
# The derivative of logsumexp is the softmax, so
# $\partial L / \partial z_{nv} = \big(\mathrm{softmax}(z_n)_v - [v = t_n]\big) / N$.
# You can read it as "predicted minus actual", averaged over positions.

# %%
z, t = rng.normal(size=(2, 5, 7)) * 2, rng.integers(0, 7, size=(2, 5))
L, cache = loss.forward(z, t)
dz = loss.backward(1.0, cache)
report("cross-entropy", check_gradients(lambda: loss.forward(z, t)[0], {"logits": z}, {"logits": dz}))

# %% [markdown]
# ## 4. SwiGLU: $y = W_{down}\,(\mathrm{silu}(a) \odot u)$, $a = W_{gate} x$, $u = W_{up} x$
#
# With $s = \sigma(a)$ and $\mathrm{silu}(a) = a s$, we have
# $\mathrm{silu}'(a) = s + a s (1 - s) = s + \mathrm{silu}(a)(1 - s)$. So for $h = \mathrm{silu}(a) \odot u$:
# $\partial L/\partial u = \partial L/\partial h \odot \mathrm{silu}(a)$ and
# $\partial L/\partial a = \partial L/\partial h \odot u \odot \mathrm{silu}'(a)$. After that come three linear backwards,
# and $x$ adds the two gradients it receives, one through the gate and one through the up projection.

# %%
C, F = 6, 10
x, R = rng.normal(size=(3, 4, C)), rng.normal(size=(3, 4, C))
Wg, Wu, Wd = rng.normal(size=(F, C)), rng.normal(size=(F, C)), rng.normal(size=(C, F))
y, cache = ffn.forward(x, Wg, Wu, Wd)
dx, g = ffn.backward(R, cache)
report("swiglu", check_gradients(lambda: float(np.sum(ffn.forward(x, Wg, Wu, Wd)[0] * R)),
                                 {"x": x, "gate": Wg, "up": Wu, "down": Wd},
                                 {"x": dx, "gate": g["gate"], "up": g["up"], "down": g["down"]}))

# %% [markdown]
# ## 5. RoPE: a rotation of each pair of dimensions $(i, i + D/2)$ by an angle set by the position
#
# A rotation is orthogonal, so its transpose is its inverse. The backward pass rotates the
# gradient back by the same angle: $dx_1 = dy_1\cos + dy_2\sin$ and $dx_2 = dy_2\cos - dy_1\sin$.

# %%
T, D = 5, 8
cos, sin = rope.cos_sin(np.arange(T), D, 10000.0, dtype=F64)
x, R = rng.normal(size=(2, 3, T, D)), rng.normal(size=(2, 3, T, D))
y, cache = rope.forward(x, cos, sin)
report("rope", check_gradients(lambda: float(np.sum(rope.forward(x, cos, sin)[0] * R)),
                               {"x": x}, {"x": rope.backward(R, cache)}))
print("a rotation keeps lengths: |y| - |x| =", float(np.abs(np.linalg.norm(y, axis=-1) - np.linalg.norm(x, axis=-1)).max()))

# %% [markdown]
# ## 6. Attention: $P = \mathrm{softmax}(q k^\top / \sqrt D + \mathrm{mask})$, $y = P v$
#
# The matrix products give $dP = dy\, v^\top$, $dv = P^\top dy$, $dq = dS\, k / \sqrt D$ and
# $dk = dS^\top q / \sqrt D$. Through a row softmax $P = \mathrm{softmax}(S)$:
#
# $$dS = P \odot \big(dP - \textstyle\sum_s dP \odot P\big).$$
#
# Masked entries have $P = 0$, so they get no gradient. With grouped-query attention, each kv
# head serves $R = H/G$ query heads, so $dk$ and $dv$ sum over those R heads. With attention
# sinks, the sink logit sits in the softmax's denominator. Its gradient is
# $-p_{sink} \sum_s dP \odot P$ (it has no value vector, so no $dP$ of its own).
# Below, one config has all of these features: GQA, biases, sinks, a sliding window and q/k norms.

# %%
cfg = minimoe.Config(d_model=16, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=8, qkv_bias=True,
                     o_bias=True, attn_sinks=True, sliding_window=3, qk_norm="head")
p = {k: v + rng.normal(0, 0.3, size=v.shape) for k, v in
     minimoe.model.sub_params(minimoe.model.init_params(cfg, dtype=F64), "layers.0.attn.").items()}
T = 6
cos, sin = rope.cos_sin(np.arange(T), cfg.head_dim, cfg.rope_theta, dtype=F64)
x, R = rng.normal(size=(2, T, 16)), rng.normal(size=(2, T, 16))
y, cache = attention.forward(x, p, cfg, 0, cos, sin)
dx, g = attention.backward(R, cache)
report("attention", check_gradients(lambda: float(np.sum(attention.forward(x, p, cfg, 0, cos, sin)[0] * R)),
                                    {"x": x, **p}, {"x": dx, **g}))

# %% [markdown]
# ## 7. Routing: a hard choice, and a soft weight
#
# The router picks the top K experts of each token. That choice is a step function: it has no
# gradient, and the backward pass holds it fixed. What *is* differentiable is the weight of each
# chosen expert, $y_n = \sum_k w_{nk}\, \mathrm{Expert}_{e_{nk}}(x_n)$. So:
#
# * each chosen expert gets $w_{nk}\, dy_n$ for its token: the MoE backward sends each gradient
#   to exactly the experts that token used;
# * the weight gets $dw_{nk} = \mathrm{Expert}_{e_{nk}}(x_n) \cdot dy_n$, and from there the
#   gradient flows back through the renormalisation and the softmax into the router logits.
#
# A finite difference is valid only if the perturbation changes no choice. When two experts are
# nearly tied for K-th place, a step of $h$ can swap them, and the loss jumps. Here is what that
# looks like: we walk the router weights along a direction that closes a tie.

# %%
cfg = minimoe.Config(d_model=8, n_layers=1, n_heads=2, d_ff=6, n_experts=4, top_k=2, d_expert=6)
p = minimoe.model.sub_params(minimoe.model.init_params(cfg, seed=1, dtype=F64), "layers.0.moe.")
for k in p:
    p[k] = p[k] + rng.normal(0, 0.5, size=p[k].shape)
x, R = rng.normal(size=(1, 5, 8)), rng.normal(size=(1, 5, 8))
y, cache, stats = moe.forward(x, p, cfg)
print("experts chosen per token:\n", stats["experts"])
dx, g = moe.backward(R, cache)
grads = {k: g.get(k, np.zeros_like(v)) for k, v in p.items()}


def moe_loss():
    return float(np.sum(moe.forward(x, p, cfg)[0] * R))


report("moe top-2", check_gradients(moe_loss, {"x": x, **p}, {"x": dx, **grads}))

# walk token 0's 2nd and 3rd router logits towards each other by moving the router weight
logits = stats["logits"][0]
second, third = np.argsort(-logits)[1:3]
gap = logits[second] - logits[third]
direction = np.zeros_like(p["router.weight"])
direction[second] -= x[0, 0] / (x[0, 0] @ x[0, 0])
direction[third] += x[0, 0] / (x[0, 0] @ x[0, 0])          # each unit step closes the gap by 2
steps = np.linspace(0, gap, 201)
values = []
w0 = p["router.weight"].copy()
for s in steps:
    p["router.weight"][...] = w0 + s * direction
    values.append(moe_loss())
p["router.weight"][...] = w0
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(steps / (gap / 2), values, ".-")
ax.axvline(1.0, color="gray", ls=":")
ax.set_xlabel("fraction of the 2nd/3rd gap closed (1 = tie)")
ax.set_ylabel("loss")
ax.set_title("The loss jumps where the top-2 choice changes")
fig.tight_layout()
fig.savefig(os.path.join(OUT, "02_routing_jump.png"), dpi=110)
jump = np.abs(np.diff(values)).max() / np.median(np.abs(np.diff(values)))
print(f"largest step in the loss is {jump:.0f}x the typical step: the derivative does not exist there")

# %% [markdown]
# The smaller notch just before the tie is another token: moving the router weight moves every
# token's logits, and a second token's choice flips there too. Gradient descent never sees these
# jumps: it only ever uses the slope between them.

# %% [markdown]
# ## 8. The router's auxiliary losses
#
# **Load balancing** (the Switch Transformer loss, in the form Hugging Face uses for Mixtral):
# $\mathrm{aux} = E \sum_e f_e P_e$. Here $f_e$ is the fraction of tokens sent to expert $e$,
# which is a count, so it has no gradient. $P_e = \frac1N\sum_n p_{ne}$ is the mean router
# probability. So $\partial\,\mathrm{aux} / \partial p_{ne} = E f_e / N$. This pushes down the
# probability of the experts that already get the most tokens.
#
# **Router z-loss** (ST-MoE): $z = \frac1N \sum_n \big(\log\sum_e e^{\ell_{ne}}\big)^2$. Then
# $\partial z / \partial \ell_{ne} = 2\,\mathrm{lse}_n\,\mathrm{softmax}(\ell_n)_e / N$. It keeps the logits small.
#
# `minimoe.train.losses` returns these per layer. `router.backward` adds them to the gradient
# of the logits: `dprobs` passes through the softmax, and `dlogits_extra` is added as it is.
# The check below uses only the router losses (no cross-entropy), on a two-layer MoE model.

# %%
cfg = minimoe.Config(vocab_size=13, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=12,
                     n_experts=4, top_k=2, d_expert=8)
model = minimoe.Model(cfg, seed=3, dtype=F64)
for arr in model.params.values():
    arr += rng.normal(0, 0.2, size=arr.shape)
tokens = rng.integers(0, 13, size=(2, 7))


def router_losses():
    logits, cache = model.forward(tokens)
    aux, daux = losses.load_balancing_loss(cache["routing"], 1.0)
    z, dz = losses.z_loss(cache["routing"], 1.0)
    return aux + z, logits, cache, losses.combine(daux, dz)


L, logits, cache, rg = router_losses()
print(f"aux {losses.load_balancing_loss(cache['routing'])[0]:.4f} (perfect balance: {cfg.n_layers * cfg.top_k}), "
      f"z {losses.z_loss(cache['routing'])[0]:.4f}")
grads = model.backward(np.zeros_like(logits), cache, rg)
errors = check_gradients(lambda: router_losses()[0], model.params, grads)
report("aux + z losses (every parameter)", {k: v for k, v in errors.items() if "router" in k})
assert max(errors.values()) < 1e-6

# %% [markdown]
# ## 9. The whole model
#
# `Model.backward` runs the layers' backward passes in reverse order. It adds the two branches
# of each residual connection ($x + f(\mathrm{norm}(x))$ passes $dx$ straight through and also
# through $f$). With tied embeddings it adds the output head's gradient to the embedding's.
# Here is every parameter of a small MoE model under cross-entropy + 0.3·aux + 0.1·z.

# %%
cfg = minimoe.Config(vocab_size=13, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=12,
                     n_experts=4, top_k=2, d_expert=8, tie_embeddings=True, dense_layers=[0])
data = rng.integers(0, 13, size=(2, 9))


def routing_margin(cache):
    """The smallest gap between a token's K-th and (K+1)-th router logit, over tokens and layers."""
    gaps = [np.inf]
    for s in cache["routing"]:
        if s is not None:
            top = -np.sort(-s["logits"], axis=-1)              # (N, E) descending
            gaps.append(float((top[:, cfg.top_k - 1] - top[:, cfg.top_k]).min()))
    return min(gaps)


# as section 7 showed, the check needs routing that no perturbation of size ~h can flip:
# take the first seed whose margin is comfortably larger than the perturbations
for seed in range(20):
    model = minimoe.Model(cfg, seed=seed, dtype=F64)
    noise = np.random.default_rng(seed)
    for arr in model.params.values():
        arr += noise.normal(0, 0.2, size=arr.shape)
    margin = routing_margin(model.forward(data[:, :-1])[1])
    if margin > 0.01:
        break
print(f"seed {seed}: the closest top-2 decision has a logit gap of {margin:.3f}")


def total_loss():
    logits, cache = model.forward(data[:, :-1])
    ce, ce_cache = loss.forward(logits, data[:, 1:])
    aux, daux = losses.load_balancing_loss(cache["routing"], 0.3)
    z, dz = losses.z_loss(cache["routing"], 0.1)
    return ce + 0.3 * aux + 0.1 * z, cache, ce_cache, losses.combine(daux, dz)


L, cache, ce_cache, rg = total_loss()
grads = model.backward(loss.backward(1.0, ce_cache), cache, rg)
chosen = [s["experts"].copy() for s in cache["routing"] if s is not None]


def checked_loss():
    L, cache, _, _ = total_loss()
    now = [s["experts"] for s in cache["routing"] if s is not None]
    assert all(np.array_equal(a, b) for a, b in zip(now, chosen)), "a perturbation changed the routing"
    return L


errors = check_gradients(checked_loss, model.params, grads)
for name, err in errors.items():
    print(f"  {name:34s} {err:.1e}")
print(f"worst relative error over {len(errors)} parameters: {max(errors.values()):.1e}",
      "OK" if max(errors.values()) < 1e-6 else "NOT OK")
assert max(errors.values()) < 1e-6

fig, ax = plt.subplots(figsize=(7, 5))
names = list(errors)
ax.barh(range(len(names)), [max(errors[n], 1e-16) for n in names])
ax.set_xscale("log")
ax.axvline(1e-6, color="red", lw=1, label="tolerance 1e-6")
ax.set_yticks(range(len(names)), names, fontsize=6)
ax.invert_yaxis()
ax.set_xlabel("relative error, hand-written vs finite difference")
ax.set_title("Whole-model gradient check, float64: every parameter below the tolerance")
ax.legend()
fig.tight_layout()
fig.savefig(os.path.join(OUT, "02_model_gradcheck.png"), dpi=110)

# %% [markdown]
# Every parameter agrees to about 1e-9 or better. The tests in `tests/test_grad_layers.py` and
# `tests/test_grad_model.py` run these checks, and more configurations: top-1, top-k = E, all three
# router rules, shared experts and gpt-oss's clamped SwiGLU. `docs/training.md` collects the math.
# Next, tutorial 03 uses these gradients to train an MoE.
