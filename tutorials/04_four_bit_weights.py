# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 04 · Four-bit weights: one block by hand, then a whole model
#
# A float32 weight costs 4 bytes. The models people run on laptops store most weights in about
# half a byte: llama.cpp's GGUF files in Q4_0 or Q4_1 blocks, gpt-oss's experts in MXFP4. Every
# one of these formats cuts a weight row into **blocks of 32 values** and stores each block as one
# shared scale plus 32 small codes.
#
# We take one block of 32 weights and follow it by hand: to codes, to bytes, back to floats, and
# into a dot product. Each step is checked against `minimoe.quant`, whose bytes are in turn
# tested identical to llama.cpp's (`gguf.quants`). Then we compare Q4_0 with MXFP4 on many blocks,
# quantize a whole model with `minimoe.quantize`, save it packed, and measure what each recipe
# costs in validation loss.
#
# Shape legend: BS = 32 values per block, N blocks; C d_model, F expert width, E experts, V vocab.

# %%
import os
import shutil
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import minimoe
from minimoe import quant
from minimoe.quant.mxfp4 import E2M1_VALUES

FAST = os.environ.get("MINIMOE_FAST") == "1"
OUT = os.environ.get("MINIMOE_TUTORIAL_OUT") or os.path.join(os.getcwd(), "minimoe_out")
os.makedirs(OUT, exist_ok=True)
np.set_printoptions(precision=4, suppress=True, linewidth=110)


def hexdump(b: bytes) -> str:
    return " ".join(f"{x:02x}" for x in b)


# %% [markdown]
# ## 1. One block of 32 weights
# Trained weight matrices hold small numbers around zero; 0.02 is a typical spread.

# %%
rng = np.random.default_rng(4)
w = (0.02 * rng.standard_normal(32)).astype(np.float32)          # (BS,) one block
print("w =", w)
print(f"largest magnitude: w[{np.abs(w).argmax()}] = {w[np.abs(w).argmax()]:.5f}")

# %% [markdown]
# ## 2. Q4_0 by hand: 18 bytes
# Q4_0 keeps one fp16 scale `d` and a 4-bit code `q` in 0..15 per weight, decoded as `d * (q - 8)`.
# The scale is chosen so that the largest-magnitude value, **sign kept**, lands exactly on code 0:
# `d = max / -8`. Everything is float32 arithmetic, as in ggml's `quantize_row_q4_0_ref`.

# %%
i_max = np.abs(w).argmax()
signed_max = w[i_max]                                            # sign kept
d = np.float32(signed_max / np.float32(-8))                      # the scale
d16 = np.float16(d)                                              # stored as fp16 (round to nearest even)
inv_d = np.float32(1) / d                                        # ggml multiplies by 1/d
q = np.minimum(15, np.trunc(w * inv_d + np.float32(8.5))).astype(np.uint8)   # (BS,) codes 0..15
print(f"d = {signed_max:.6f} / -8 = {d:.7f}  -> fp16 {float(d16):.7f}")
print("codes q =", q)

# %% [markdown]
# The 32 codes go into 16 bytes. The order surprises people: byte `j` holds element `j` in its low
# nibble and element `j + 16` in its high nibble, so the first half of the block sits in the low
# nibbles and the second half in the high ones.

# %%
qs = (q[:16] | (q[16:] << 4)).astype(np.uint8)                   # (16,) bytes
block = d16.tobytes() + qs.tobytes()                             # 2 + 16 = 18 bytes
print("by hand        :", hexdump(block))
library = quant.quantize(w[None], "q4_0").blocks.tobytes()       # (1, 32) -> (1, 18)
print("minimoe.quant  :", hexdump(library))
assert block == library
print(f"byte 0..1 = the fp16 scale; byte 2 = {qs[0]:#04x} = q[16] {q[16]} (high nibble), q[0] {q[0]} (low nibble)")
print(f"{len(block)} bytes for 32 weights = {len(block) * 8 / 32} bits per weight (float32: 128 bytes)")

# %% [markdown]
# Decoding reverses it: unpack the nibbles, subtract 8, multiply by the stored fp16 scale.

# %%
lo, hi = qs & 0x0F, qs >> 4                                      # (16,), (16,)
codes = np.concatenate([lo, hi])                                 # (BS,) back in element order
w_hat = np.float32(d16) * (codes.astype(np.float32) - 8)         # (BS,)
assert np.array_equal(w_hat, quant.dequantize(quant.QTensor("q4_0", (32,), np.frombuffer(block, np.uint8).copy())))
print("w     =", w[:8])
print("w_hat =", w_hat[:8])
err = np.abs(w - w_hat)
print(f"max |error| = {err.max():.6f}, bound amax/8 = {np.abs(w).max() / 8:.6f}")

# %% [markdown]
# ## 3. A dot product straight from the codes
# A matmul never needs the float weights. Because one scale covers the whole block,
# `x · w_hat = d * Σ_j x_j (q_j - 8)`: one multiply by `d` per block instead of one per weight.
# This is what the fused kernels (minimoe/kernels/) compute.

# %%
x = rng.standard_normal(32).astype(np.float32)                   # (BS,) activations
exact = float(x @ w)
via_floats = float(x @ w_hat)
via_codes = float(np.float32(d16) * (x * (codes.astype(np.float32) - 8)).sum())
print(f"x·w (float32 weights)    = {exact:+.6f}")
print(f"x·w_hat (decoded)        = {via_floats:+.6f}")
print(f"d · Σ x (q - 8) (codes)  = {via_codes:+.6f}")

# %% [markdown]
# ## 4. The same block in MXFP4: 17 bytes
# MXFP4 (the OCP microscaling format gpt-oss ships its experts in) spends its 4 bits differently.
# Each code is a tiny float, E2M1: a sign, 2 exponent bits and 1 mantissa bit, giving the values
# 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives. The shared scale is a power of two, stored as one
# exponent byte `e` (E8M0): `x = E2M1[q] * 2^(e - 127)`. The scale is `2^floor(log2 amax) / 4`,
# so `amax / scale` falls in [4, 8); anything beyond 6 is clipped to 6.

# %%
print("E2M1 values by code:", E2M1_VALUES)
amax = np.abs(w).max()
e = int(np.floor(np.log2(amax))) - 2 + 127                       # the E8M0 byte
scale = np.ldexp(np.float32(1), e - 127)
grid = E2M1_VALUES * scale                                       # (16,) the value of each code
q_mx = np.abs(grid[None, :] - w[:, None]).argmin(axis=1).astype(np.uint8)   # (BS,) nearest code
mx_block = bytes([e]) + (q_mx[:16] | (q_mx[16:] << 4)).astype(np.uint8).tobytes()
print(f"amax = {amax:.5f}; e = {e} -> scale 2^{e - 127} = {scale:.6f}; amax/scale = {amax / scale:.2f}")
print("by hand        :", hexdump(mx_block))
print("minimoe.quant  :", hexdump(quant.quantize(w[None], "mxfp4").blocks.tobytes()))
assert mx_block == quant.quantize(w[None], "mxfp4").blocks.tobytes()
w_mx = grid[q_mx]                                                # (BS,) decoded
print(f"max |error|: q4_0 {np.abs(w - w_hat).max():.6f}   mxfp4 {np.abs(w - w_mx).max():.6f}")
print(f"RMS error  : q4_0 {np.sqrt(np.mean((w - w_hat) ** 2)):.6f}   mxfp4 {np.sqrt(np.mean((w - w_mx) ** 2)):.6f}")

# %% [markdown]
# Q4_0's scale fits this block's largest value exactly; MXFP4's power-of-two scale usually does
# not, so part of its range goes unused, and its grid is coarse far from zero (3, 4, 6 times the
# scale). In exchange its scale is one byte instead of two (4.25 bits per weight, not 4.5), and
# decoding needs no fp16 multiply: hardware with MX support applies a power-of-two scale by
# adding to the exponent.
#
# ## 5. Q4_0 against MXFP4 on many blocks
# One block proves nothing. We quantize many rows in every format and look at the error
# distribution. The weights here are **synthetic samples, not a trained model**: Gaussian, and
# heavy-tailed (Student's t with 3 degrees of freedom), both with a spread of 0.02.
# Trained weight matrices sit between the two; section 6 measures a model.

# %%
shape = (64, 512) if FAST else (256, 4096)                       # (rows, C), C split into blocks
samples = {
    "gaussian samples": 0.02 * rng.standard_normal(shape),
    "heavy-tailed samples (t, 3 dof)": 0.02 * rng.standard_t(3, shape) / np.sqrt(3),
}
FORMATS = ["q8_0", "q4_1", "q4_0", "mxfp4", "nf4"]
print(f"{'weights':<34}" + "".join(f"{f:>9}" for f in FORMATS) + "   relative RMS error")
errors = {}
for label, arr in samples.items():
    arr = arr.astype(np.float32)
    row = []
    for fmt in FORMATS:
        e_ = quant.quantize(arr, fmt).dequantize() - arr                           # (rows, C)
        amax_block = np.abs(arr.reshape(-1, 32)).max(axis=1, keepdims=True)         # (N, 1)
        errors[label, fmt] = (e_.reshape(-1, 32) / amax_block).ravel()              # error / block amax
        row.append(np.sqrt(np.mean(e_ ** 2)) / np.sqrt(np.mean(arr ** 2)))
    print(f"{label:<34}" + "".join(f"{100 * r:>8.2f}%" for r in row))
print(f"{'bits per weight':<34}" + "".join(f"{quant.bits_per_weight(f):>9.2f}" for f in FORMATS))

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
bins = np.linspace(-0.25, 0.25, 101)
for ax, label in zip(axes, samples):
    for fmt, color in (("q4_0", "#1f77b4"), ("mxfp4", "#d62728")):
        ax.hist(errors[label, fmt], bins=bins, histtype="step", lw=1.5, color=color, density=True,
                label=f"{fmt}: RMS {np.sqrt(np.mean(errors[label, fmt] ** 2)):.3f} amax")
    ax.set_title(label)
    ax.set_xlabel("error / block amax")
    ax.legend(fontsize=8)
axes[0].set_ylabel("density")
fig.suptitle("quantization error of Q4_0 and MXFP4, in units of each block's largest value")
fig.tight_layout()
fig.savefig(os.path.join(OUT, "04_error_histograms.png"), dpi=110)
print("saved", os.path.join(OUT, "04_error_histograms.png"))

# %% [markdown]
# On both samples Q4_0 is more accurate than MXFP4; the gap narrows with heavy tails, where
# most values are small and MXFP4's grid is densest near zero. Q4_0's errors spread evenly up to
# half a step; MXFP4's have long tails from the coarse top of its grid (a value between 4 and 6
# times the scale can be off by a whole scale). gpt-oss was trained knowing its experts would be
# MXFP4 (quantization-aware training), which is how it gets away with it.

# %% [markdown]
# ## 6. A model that has learned something
# Quantization matters on trained weights, so we train a small MoE (the `tiny-moe` preset: 2
# layers, 4 experts, top-2) on the embedded corpus, Python's reference documentation, with
# minimoe's own trainer (tutorial 03 tells that story). In fast mode this is a short run; the
# model learns common characters and words, enough for its weights to stop being random.

# %%
from minimoe.train.loop import TrainConfig, Trainer  # noqa: E402

run_dir = tempfile.mkdtemp(prefix="minimoe-04-")
tc = TrainConfig(preset="tiny-moe", data="pydoc", out=run_dir, max_iters=200 if FAST else 2000,
                 batch_size=8 if FAST else 16, block_size=64, lr=3e-3, min_lr=3e-4, warmup_iters=20,
                 eval_interval=0, ckpt_interval=0, eval_iters=5, sample_tokens=0, seed=4)
trainer = Trainer.new(tc, verbose=False)
metrics = trainer.run()
model = trainer.model
print(f"trained {metrics['iters']} iterations: train loss {metrics['train_loss']:.3f}, "
      f"val loss {metrics['val_loss']:.3f}")
print(model)

# %% [markdown]
# Its weights, measured as in section 5 (this time trained weights, cut into blocks of 32):

# %%
trained = {
    "trained experts (gate, up, down)": np.concatenate(
        [model.params[f"layers.{i}.moe.experts.{k}"].reshape(-1, 32) for i in range(2) for k in ("gate", "up", "down")]),
    "trained attention (q, k, v, o)": np.concatenate(
        [model.params[f"layers.{i}.attn.{k}.weight"].reshape(-1, 32) for i in range(2) for k in "qkvo"]),
}
print(f"{'weights':<34}" + "".join(f"{f:>9}" for f in FORMATS) + "   relative RMS error")
for label, arr in trained.items():
    arr = arr.reshape(-1, 64)                                     # rows of 64 so nf4 fits too
    row = [np.sqrt(np.mean((quant.quantize(arr, f).dequantize() - arr) ** 2)) / np.sqrt(np.mean(arr ** 2))
           for f in FORMATS]
    print(f"{label:<34}" + "".join(f"{100 * r:>8.2f}%" for r in row))

# %% [markdown]
# ## 7. `minimoe.quantize`: a whole model
# A recipe says which format each group of matrices gets. Norms, the router and the embedding table
# stay float; the output head gets q8_0 (llama.cpp too keeps the output matrix at higher precision).
# `mxfp4-moe` follows llama.cpp's MXFP4_MOE: experts in MXFP4, every other matrix in Q8_0.

# %%
from minimoe.quant.model import RECIPES, error_rows, format_error_table  # noqa: E402

for name, r in RECIPES.items():
    print(f"{name:<10} {r.description}")
qmodel = minimoe.quantize(model, "mxfp4-moe")
print(qmodel.params["layers.0.moe.experts.gate"])               # (E, F, C) packed
print(qmodel.params["layers.0.moe.experts.gate"][1])            # expert 1: a view of the same bytes
print(format_error_table(error_rows(model, qmodel, "mxfp4-moe")))

# %% [markdown]
# The quantized model is an ordinary `Model`: same `forward`, same `generate`. Its matmuls go
# through `minimoe.kernels.matmul(x, w)`, which accepts a packed `w`. Saved, the packed weights stay
# packed: the safetensors file holds the GGUF bytes as uint8, and its header says which format.

# %%
tok = model.tokenizer
prompt = tok.encode("def ")
with tempfile.TemporaryDirectory() as folder:
    qmodel.save(folder)
    size = os.path.getsize(os.path.join(folder, "model.safetensors"))
    loaded = minimoe.load(folder)
    same = np.array_equal(loaded(prompt), qmodel(prompt))
size32 = os.path.getsize(os.path.join(run_dir, "model.safetensors"))
print(f"model.safetensors: fp32 {size32:,} bytes, mxfp4-moe {size:,} bytes ({size32 / size:.1f}x smaller); "
      f"logits identical after load: {same}")
print("greedy, fp32     :", repr(tok.decode(model.generate(prompt, 40))))
print("greedy, mxfp4-moe:", repr(tok.decode(qmodel.generate(prompt, 40))))

# %% [markdown]
# ## 8. What each recipe costs
# The quantization report quantizes the model with each recipe and measures the validation loss
# on the same windows of the val split (the last 10% of the corpus), next to the weight memory.
# `minimoe quantize --model DIR --report --data PATH --plot FILE` does the same from the shell.

# %%
from minimoe.evaluate import eval_tokens  # noqa: E402
from minimoe.quant.report import format_report, plot_report, quantization_report  # noqa: E402

val = eval_tokens(model, "pydoc", "val")                         # (N,) the val split, model's tokenizer
rows = quantization_report(model, val, max_tokens=2000 if FAST else None)
print(format_report(rows))
print("saved", plot_report(rows, os.path.join(OUT, "04_quantization_report.png"),
                           title="tiny-moe trained on pydoc: what each recipe costs"))

# %% [markdown]
# How to read it. Every recipe is measured on exactly the same val tokens, so the differences are
# the recipes' doing, not different samples. q8_0's weight error is a fraction of a percent and
# its loss change is tiny. The 4-bit formats move each packed weight by 7 to 11% of the weights'
# RMS (section 5); over the whole model, counting the float tensors as exact, that is the 3 to 5%
# of the rel RMSE column. What that costs depends on how well trained the model is. A briefly
# trained model (fast mode) is far from its optimum: the nudge is in a random direction, the loss
# moves either way by a few thousandths and can even come out a hair better. The fully trained
# model (full mode) sits near a minimum, where any nudge costs: there the uniform 4-bit recipes
# lose a few hundredths of a nat (one full run: q4_1 +0.027, q4_0 +0.032, mxfp4 +0.076), and the
# mixed recipes that keep attention in q8_0 lose less (mxfp4-moe +0.022, q4_0-moe +0.013). The
# printout below says which case this run is. The memory column is not random: the embedding table, norms and
# router stay float32 in every recipe, so in a model this small, where the embedding is a large
# share, even the 4-bit recipes average 7 to 8 bits per weight.

# %%
by = {r["recipe"]: r for r in rows}
print("fast mode: briefly trained, expect changes of either sign" if FAST else
      "full mode: trained the full run, expect the 4-bit recipes to cost a few hundredths of a nat")
for r in rows[1:]:
    print(f"{r['recipe']:<10} {r['weight_bytes'] / by['fp32']['weight_bytes']:>4.0%} of the fp32 bytes, "
          f"weight error {100 * r['rel_rmse']:.2f}%, val loss {r['delta_loss']:+.4f} nats vs fp32")
shutil.rmtree(run_dir, ignore_errors=True)                       # the training run's folder
