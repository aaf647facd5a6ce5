# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 10 · Run a real-size model
#
# Tutorial 06 asked the estimator whether gpt-oss-20b fits on a laptop: about 13 GB of weights
# (its 24 layers of 32 experts in MXFP4, everything else in bf16), and each token reads about
# 4 GB of them. Here we check the answer by running a model of that size with minimoe itself.
#
# Three ideas make it possible:
#
# 1. **Map the file instead of reading it.** `minimoe.load` memory-maps the safetensors file: every
#    tensor is a NumPy view of the file's bytes, and nothing is read until it is used. The
#    operating system brings a page (4 KiB) in when the model first touches it.
# 2. **Keep the weights as stored.** A bf16 weight stays bf16 (2 bytes), and matmul widens each
#    value to float32 as it reads it; an MXFP4 expert stays in its 17-byte blocks. A weight is
#    never copied into float32 (which would double a bf16 model).
# 3. **Quantize while loading**, when the file is bf16 and 4 bits is wanted: one tensor at a time,
#    a piece at a time, so the float32 model never exists.
#
# Then one decoded token brings in only what it reads: its embedding row, the attention, the
# experts its router picks, and the head. We watch that happen, page by page.
#
# Everything is written under `./minimoe_out/10/` in the working directory. `MINIMOE_FAST=1` (what
# the tests run) uses a scaled-down gpt-oss (the real widths, 2 layers of 8 experts: 0.2 GB).
# Without it the tutorial writes the real gpt-oss-20b shapes, **13.8 GB on disk**, once.
#
# Shape legend: C d_model, F expert width, E experts, K top-k, V vocab.

# %%
import os

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

import minimoe
from minimoe.bench import big
from minimoe.io.pages import is_mapped, resident_bytes

if os.environ.get("MPLBACKEND") is None and not hasattr(__builtins__, "__IPYTHON__"):
    matplotlib.use("Agg")
FAST = os.environ.get("MINIMOE_FAST") == "1"
OUT = os.path.join(os.environ.get("MINIMOE_TUTORIAL_OUT") or os.path.join(os.getcwd(), "minimoe_out"), "10")
os.makedirs(OUT, exist_ok=True)
GB = 1e9

cfg = minimoe.Config.preset("gpt-oss-20b")
if FAST:
    cfg = cfg.replace(name="gpt-oss-20b-scaled", vocab_size=4096, n_layers=2, n_experts=8, top_k=4,
                      sliding_layers=[0], max_seq_len=256)
print(f"{cfg.name}: {cfg.n_layers} layers, C = {cfg.d_model}, {cfg.n_experts} experts of F = "
      f"{cfg.d_expert}, top-{cfg.top_k}, V = {cfg.vocab_size}")

# %% [markdown]
# ## 1. bf16 is the top half of a float32
# A float32 is 1 sign bit, 8 exponent bits and 23 mantissa bits. bf16 keeps the sign, the same
# 8 exponent bits and the first 7 mantissa bits: the top 16 bits. So widening bf16 to float32 is a
# shift by 16, exact, and it is what the bf16 matmul kernel (`minimoe/kernels/halfmatmul.py`) does
# for each weight as it reads it.

# %%
from minimoe.quant.bf16 import bf16_to_float32, float32_to_bf16

x = np.array([3.14159265, -0.015625, 1e-20], np.float32)
bits32 = x.view(np.uint32)
bits16 = float32_to_bf16(x)
for v, b32, b16, back in zip(x, bits32, bits16, bf16_to_float32(bits16)):
    print(f"{v:>12.6g}  float32 {b32:032b}  bf16 {b16:016b}  -> {back:.6g}")
assert (bits16.astype(np.uint32) << 16 == bf16_to_float32(bits16).view(np.uint32)).all()

# %% [markdown]
# ## 2. A checkpoint with the real shapes and storage
# `minimoe bench big` writes random weights with exactly the released model's shapes and
# storage (MXFP4 experts, bf16 elsewhere), streaming: a few MB of memory for 13 GB of file.
# Random weights route tokens arbitrarily, which is all a memory and speed measurement needs.

# %%
folder = os.path.join(OUT, cfg.name)
storage = big.PRESETS["gpt-oss-20b"].storage                     # {"experts": "mxfp4"}
if not big.existing_checkpoint(cfg, storage, folder):
    big.write_checkpoint(cfg, storage, folder)
stored = os.path.getsize(os.path.join(folder, "model.safetensors"))
print(f"{folder}: {stored / GB:.2f} GB on disk")

# %% [markdown]
# ## 3. Load it, memory-mapped
# `minimoe.load` checks every tensor (names, shapes, and a scan for NaN and inf), and gives the
# scanned pages back. The model then holds views of the file: `is_mapped` says so, and
# `resident_bytes` (from `/proc/self/pagemap`, Linux) says how many of their pages this process
# has in memory.

# %%
model = minimoe.load(folder)
q = model.params["layers.0.attn.q.weight"]
experts = model.params["layers.0.moe.experts.gate"]
print("attn.q     ", q)
print("experts.gate", experts)
mapped = {n: getattr(v, "blocks", v) for n, v in model.params.items()}
mapped = {n: a for n, a in mapped.items() if is_mapped(a)}
held = big.held_bytes(model)
print(f"{len(mapped)} of {len(model.params)} tensors are views of the file "
      f"(the others are norm scales, biases, sinks and routers, widened to float32: "
      f"{sum(getattr(v, 'nbytes', 0) for n, v in model.params.items() if n not in mapped) / 1e6:.1f} MB)")
in_memory = sum(resident_bytes(a) or 0 for a in mapped.values())
print(f"the model holds {held / GB:.2f} GB; of its mapped pages, {in_memory / 1e6:.1f} MB are in memory")

# %% [markdown]
# ## 4. One token, page by page
# We run one token and ask which pages came in. The trace says which experts the router picked;
# pagemap says which experts' bytes are now in memory. They agree: a whole expert for each one
# picked, and for the others at most the edge of one (the kernel maps the file's page cache a
# whole *folio*, up to 2 MB, at a time). On a machine short of memory, the operating system may
# already have evicted part of an expert the token read; then it is missing from the second list.

# %%
with minimoe.trace() as t:
    model.forward(np.array([[42]]), model.new_kv_cache(1, 4))
fractions = big.expert_pages(model)                               # {layer: [fraction per expert]}
routing = t.routing()
for layer, fr in fractions.items():
    picked = sorted(routing[layer]["experts"][0].tolist())
    whole = [e for e, f in enumerate(fr) if f >= 0.99]
    print(f"layer {layer}: router picked {picked}, experts in memory {whole}")
    assert set(whole) <= set(picked)                              # nothing the token did not need
    if whole != picked:                                           # read, then pushed out again:
        print(f"  (experts {sorted(set(picked) - set(whole))} were read and already partly evicted: "
              f"the page cache is short of memory, as right after writing {held / GB:.1f} GB)")
after = {n: resident_bytes(a) or 0 for n, a in mapped.items()}
from minimoe.params import component

by_comp: dict = {}
for n, b in after.items():
    by_comp[component(n)] = by_comp.get(component(n), 0) + b
read = t.totals()["weight_bytes"]
print(f"the token read {read / GB:.3f} GB of weights (traced); pages now in memory: "
      f"{sum(after.values()) / GB:.3f} GB of the {stored / GB:.2f} GB file")
print("  by component: " + ", ".join(f"{c} {b / 1e6:.1f} MB" for c, b in by_comp.items() if b))

fig, ax = plt.subplots(figsize=(7, 1 + 0.4 * len(fractions)))
im = ax.imshow(np.array(list(fractions.values())), vmin=0, vmax=1, cmap="Blues", aspect="auto")
ax.set_xlabel("expert"), ax.set_ylabel("layer")
ax.set_title("fraction of each expert's bytes in memory after one token")
fig.colorbar(im, ax=ax)
fig.tight_layout()
fig.savefig(os.path.join(OUT, "10_expert_pages.png"), dpi=120)

# %% [markdown]
# ## 5. Quantizing while loading
# OLMoE and Qwen3 ship in bf16. `minimoe.load(folder, recipe="q4_0")` quantizes the matrices the
# recipe names as it loads them: each tensor a piece at a time (widen to float32, quantize, give
# the file's pages back). Here we load our checkpoint with `q8_0` for everything the recipe
# names; the MXFP4 experts stay as stored (quantizing twice would add the errors of both).
#
# The fast kernels multiply a copy of each packed weight in their own layout, about its size
# again. For a weight of 16 MB or more held in memory that copy is made only within a *repack
# budget* (half the memory available, or `minimoe.set_repack_budget(bytes)`); past it the weight
# is read as stored, slower, and minimoe says so once on stderr (docs/checkpoints.md).

# %%
q8 = minimoe.load(folder, recipe="q8_0")
print("attn.q      ", q8.params["layers.0.attn.q.weight"])
print("experts.gate", q8.params["layers.0.moe.experts.gate"])
print(f"held: {big.held_bytes(q8) / GB:.2f} GB (as stored: {held / GB:.2f} GB)")
del q8

# %% [markdown]
# ## 6. Measured against the estimator
# `minimoe bench big` does all of the above in a child process (so that its peak memory is the
# model's alone) and decodes a few tokens, then puts beside it what the estimator predicts for
# this machine: its RAM, and the read bandwidth `minimoe bench machine` measured. On a shared
# machine the speed varies from run to run; the bytes do not.

# %%
r = big.run("gpt-oss-20b", folder=folder, tokens=4, config=cfg if FAST else None, progress=print)
print(big.format_report(r))
m = r["measured"]
assert m["peak_rss"] <= 1.15 * m["held_bytes"] + 300 * 2**20
