# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 04b · K-quants: the 256-weight super-block of Q4_K_M files
#
# Tutorial 04 followed one Q4_0 block: 32 weights, one fp16 scale, 32 four-bit codes. That
# scale costs 16 bits per 32 weights, half a bit per weight. The files people actually download
# are mostly **Q4_K_M**, built from two *K-quant* formats: **Q4_K** for most matrices and
# **Q6_K** for the sensitive ones (the output head, some value projections).
#
# A K-quant spends fewer bits on scales by giving them **two levels**:
#
# * a **super-block** of 256 weights has one fp16 `d` (and, in Q4_K, one fp16 `dmin`);
# * each of its 8 **sub-blocks** of 32 weights has a **6-bit** integer scale `sc` and a 6-bit min `m`.
#
# A weight decodes as `x = d·sc[j]·q − dmin·m[j]`. Here we build one Q4_K super-block by hand,
# byte by byte, check it against `minimoe.quant` (whose decoding is bit-identical to llama.cpp's
# `gguf` package), then compare Q4_0, Q4_K, Q5_K and Q6_K on many weights and multiply by a packed
# Q4_K matrix without ever unpacking it.
#
# Shape legend: N super-blocks, 256 values each, 8 sub-blocks of 32 (Q4_K) or 16 of 16 (Q6_K).

# %%
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import minimoe
from minimoe import quant
from minimoe.quant import k_quants, q4_k

FAST = os.environ.get("MINIMOE_FAST") == "1"
OUT = os.environ.get("MINIMOE_TUTORIAL_OUT") or os.path.join(os.getcwd(), "minimoe_out")
os.makedirs(OUT, exist_ok=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## One super-block, by hand
#
# Take 256 weights. Each sub-block of 32 gets its own range, as real weight rows do.

# %%
x = (rng.standard_normal(256) * np.repeat(rng.uniform(0.2, 1.5, 8), 32)).astype(np.float32)   # (256,)
sub = x.reshape(8, 32)                                                                         # (8, 32)

# %% [markdown]
# **Level 1, per sub-block.** Fit `x ≈ scale·q − min` with codes `q` in 0..15. The simplest fit
# spans the sub-block's range `[min(x, 0), max x]` with 16 levels (ggml then refines it with a
# small search, `k_quants.make_qkx2_quants`; we use that search below and the plain fit here).

# %%
lo = np.minimum(sub.min(axis=1), 0)                 # (8,) the min, never above 0
hi = sub.max(axis=1)                                # (8,)
scale = (hi - lo) / 15                              # (8,) 16 levels span the range
mins = -lo                                          # (8,) stored positive: x = scale*q - min
print("sub-block scales:", np.round(scale, 3))
print("sub-block mins:  ", np.round(mins, 3))

# %% [markdown]
# **Level 2, per super-block.** The 8 scales are themselves quantized to 6 bits against the
# largest one: `d = max(scale)/63` and `sc[j] = round(scale[j]/d)`; the same for the mins with
# `dmin`. Only `d` and `dmin` are fp16. 8 × (6 + 6) bits = 12 bytes for all scales and mins.

# %%
d = np.float16(scale.max() / 63).astype(np.float32)          # one fp16 per super-block
dmin = np.float16(mins.max() / 63).astype(np.float32)
sc = np.minimum(np.rint(scale / d), 63).astype(np.uint8)     # (8,) 6-bit
m = np.minimum(np.rint(mins / dmin), 63).astype(np.uint8)    # (8,) 6-bit
q = np.clip(np.rint((sub + (dmin * m)[:, None]) / (d * sc)[:, None]), 0, 15).astype(np.uint8)  # (8, 32)
print("d =", d, " dmin =", dmin)
print("sc =", sc.tolist())
print("m  =", m.tolist())

# %% [markdown]
# **The bytes.** 2 (d) + 2 (dmin) + 12 (scales) + 128 (codes) = 144 bytes for 256 weights.
# The 12 scale bytes pack eight (sc, m) pairs of 6 bits: bytes 0-3 hold sc[0..3] in their low 6
# bits, bytes 4-7 m[0..3], bytes 8-11 the low 4 bits of sc[4..7] and m[4..7], and the top 2 bits
# of bytes 0-7 carry the high 2 bits of sc[4..7] and m[4..7]. The codes go in chunks of 64
# values: byte `l` of chunk `c` holds value `64c + l` in its low nibble and `64c + 32 + l` in
# its high nibble.

# %%
scale_bytes = np.zeros(12, np.uint8)
scale_bytes[0:4] = sc[0:4] | ((sc[4:8] >> 4) << 6)
scale_bytes[4:8] = m[0:4] | ((m[4:8] >> 4) << 6)
scale_bytes[8:12] = (sc[4:8] & 0x0F) | ((m[4:8] & 0x0F) << 4)
codes = q.reshape(4, 2, 32)                                  # (chunk, low/high, l)
code_bytes = (codes[:, 0] | (codes[:, 1] << 4)).reshape(128)
block = np.concatenate([np.array([d, dmin], np.float16).view(np.uint8), scale_bytes, code_bytes])
print(f"{block.size} bytes for 256 weights = {block.size * 8 / 256} bits per weight")
assert np.array_equal(scale_bytes, k_quants.pack_scale_min(sc[None], m[None])[0])   # minimoe's packer

# %% [markdown]
# Decode it three ways: our own formula, minimoe's vectorized decoder, and the readable loop
# oracle (`q4_k.dequantize_block_loop`, a transcription of ggml's `dequantize_row_q4_K`).

# %%
by_hand = ((d * sc)[:, None] * q - (dmin * m)[:, None]).reshape(256)
vectorized = q4_k.dequantize_blocks(block[None])[0]
loop = q4_k.dequantize_block_loop(block)
print("by hand == minimoe == loop oracle:", np.array_equal(by_hand, vectorized) and np.array_equal(vectorized, loop))
print("max |error| of the hand-built block:", float(np.abs(by_hand - x).max()))

# %% [markdown]
# minimoe's encoder (`quant.quantize(x, "q4_k")`) follows ggml's `quantize_row_q4_K_ref`: the same
# two levels, but each sub-block's `(scale, min)` comes from a 21-step search that minimises a
# weighted squared error. It lands closer than our plain fit:

# %%
ggml_like = quant.quantize(x[None], "q4_k").dequantize()[0]
rms = lambda e: float(np.sqrt(np.mean(e ** 2)))
print(f"RMS error: plain fit {rms(by_hand - x):.4f}, ggml's search {rms(ggml_like - x):.4f}")

# %% [markdown]
# ## Q2_K to Q6_K, and Q4_0, on many weights
#
# Bits per weight include every scale. Q4_K spends 4.5 bits like Q4_0, but its sub-block mins
# follow asymmetric ranges and its 6-bit scales cost little, so its error is lower.

# %%
n_rows = 64 if FAST else 512
w = rng.standard_normal((n_rows, 1024)).astype(np.float32) * rng.uniform(0.5, 2, (n_rows, 1)).astype(np.float32)
rows = []
for fmt in ("q2_k", "q3_k", "q4_0", "q4_k", "q5_k", "q6_k", "q8_0"):
    err = quant.quantize(w, fmt).dequantize() - w
    rows.append((fmt, quant.bits_per_weight(fmt), rms(err) / rms(w)))
    print(f"{fmt:5s} {quant.bits_per_weight(fmt):6.4g} bits/weight   relative RMS error {rows[-1][2]:.4f}")

fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot([r[1] for r in rows], [r[2] for r in rows], "o-")
for fmt, bits, e in rows:
    ax.annotate(fmt, (bits, e), textcoords="offset points", xytext=(4, 4))
ax.set_xlabel("bits per weight (scales included)")
ax.set_ylabel("relative RMS error")
ax.set_yscale("log")
ax.set_title("Gaussian weights")
fig.tight_layout()
fig.savefig(os.path.join(OUT, "04b_bits_vs_error.png"), dpi=110)
print("saved", os.path.join(OUT, "04b_bits_vs_error.png"))

# %% [markdown]
# ## Multiplying by a packed Q4_K matrix
#
# `minimoe.matmul(x, W)` takes the packed QTensor. For a few rows of `x` (decoding one token) it
# runs a fused GEMV over the GGUF bytes (minimoe/kernels/kquant_matmul.py): per sub-block it adds
# up `q·x` and `x` and applies `d·sc` and `dmin·m` once, so no float copy of W is ever made.

# %%
W = quant.quantize(w[:, :512], "q4_k", name="ffn_up")       # (n_rows, 512) packed
xv = rng.standard_normal((1, 512)).astype(np.float32)       # one token
fused = minimoe.matmul(xv, W)                               # (1, n_rows)
reference = xv @ W.dequantize().T
print("fused GEMV vs dequantize-then-multiply, max |diff|:", float(np.abs(fused - reference).max()))
print(f"packed: {W.nbytes} bytes; float32 would be {W.dequantize().nbytes} bytes")
