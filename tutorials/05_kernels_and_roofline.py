# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 05 · Kernels and the roofline: why 4-bit decoding is fast
#
# To decode one token, a model multiplies one activation vector by every active weight matrix:
# `y = W x`, a GEMV. Each weight is read once and used for 2 flops (a multiply and an add), so the
# time is the time to **move the weights** from memory, not to do the arithmetic. A Q4_0 weight
# is 4.5 bits instead of float32's 32, so the same matrix moves 7.1x fewer bytes, and can be up
# to 7.1x faster, if the kernel decodes the 4-bit codes as fast as the bytes arrive.
#
# We write that kernel three times, each faster than the last:
# 1. a plain Python loop over the GGUF bytes (the algorithm, one number at a time);
# 2. its NumPy twin (`MINIMOE_BACKEND=numpy`): whole arrays, but it materialises float weights;
# 3. the Numba kernel `minimoe.kernels.qmatmul.gemv_q4_0`: fused, never a float weight in memory.
#
# Then we measure this machine's two ceilings (memory bandwidth, float32 matmul peak) and place
# every version on the **roofline**: achieved GFLOP/s against flops per byte moved.
#
# Shape legend: O output rows, I input width, nb = I/32 blocks per row, R rows of x.

# %%
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import minimoe
from minimoe import quant
from minimoe.bench import machine_peaks
from minimoe.bench.timing import best_time
from minimoe.kernels import pack
from minimoe.kernels.qmatmul import dequantize, qmatmul

minimoe.set_activation_precision("float")   # sections 1-7: x stays float32; section 8 rounds it to int8
FAST = os.environ.get("MINIMOE_FAST") == "1"
OUT = os.environ.get("MINIMOE_TUTORIAL_OUT") or os.path.join(os.getcwd(), "minimoe_out")
os.makedirs(OUT, exist_ok=True)

O, I = (1024, 1024) if FAST else (14336, 4096)       # one Mixtral-8x7B expert projection in full mode
rng = np.random.default_rng(0)
W = (0.02 * rng.standard_normal((O, I))).astype(np.float32)   # (O, I)
x = rng.standard_normal((1, I)).astype(np.float32)            # (1, I): one token
qt = quant.quantize(W, "q4_0")
print(f"W: {O} x {I} float32 = {W.nbytes / 2**20:.1f} MiB; as q4_0 = {qt.nbytes / 2**20:.1f} MiB "
      f"({8 * qt.nbytes / W.size:.2f} bits per weight)")

# %% [markdown]
# ## 1. The algorithm, in plain Python
# Each row of `qt.blocks` is nb blocks of 18 bytes: a float16 scale d, then 16 bytes whose low
# nibbles are values 0..15 of the block and high nibbles values 16..31. A weight is d * (q - 8).
# The fused GEMV never builds W: for each block it adds up x * q, then scales once:
#
#     y[o] = sum_b d[o, b] * (sum_j x[32b + j] * q[o, b, j]  -  8 * sum_j x[32b + j])

# %%
def gemv_q4_0_python(x_row, blocks, rows):
    """y[o] for the first `rows` rows, straight from the GGUF bytes."""
    nb = blocks.shape[1] // 18
    y = np.zeros(rows, np.float32)
    for o in range(rows):
        acc = 0.0
        for b in range(nb):
            block = blocks[o, 18 * b:18 * b + 18]
            d = float(block[:2].view(np.float16)[0])         # the block's scale
            s = 0.0
            for j in range(16):
                byte = int(block[2 + j])
                s += x_row[32 * b + j] * ((byte & 0x0F) - 8)       # value j
                s += x_row[32 * b + 16 + j] * ((byte >> 4) - 8)    # value j + 16
            acc += d * s
        y[o] = acc
    return y


rows_py = 4 if FAST else 16                             # Python is slow: time a few rows, scale up
t0 = time.perf_counter()
y_py = gemv_q4_0_python(x[0], qt.blocks, rows_py)
t_python = (time.perf_counter() - t0) * O / rows_py     # seconds for the whole matrix
y_ref = x @ qt.dequantize().T                           # (1, O) dequantize, then multiply
assert np.allclose(y_py, y_ref[0, :rows_py], rtol=1e-4, atol=1e-4)
print(f"python loop: {t_python:.2f} s for the whole matrix (estimated from {rows_py} rows)")

# %% [markdown]
# ## 2. The NumPy twin, then the Numba kernel
# `minimoe.matmul(x, qt)` repacks the blocks once (float32 scales, and the bytes arranged so the
# innermost loop runs over many blocks at once; see `minimoe/kernels/packed.py`) and calls the
# GEMV kernel. The same call on the numpy backend runs the twin, line for line the same maths in
# array form, the version to step through in a debugger.

# %%
pw = pack(qt)
with minimoe.backend("numpy"):
    t_twin = best_time(lambda: qmatmul(x, pw), 2 if FAST else 3)
    assert np.allclose(qmatmul(x, pw), y_ref, rtol=1e-4, atol=1e-4)
with minimoe.backend("numba"):
    t_numba = best_time(lambda: qmatmul(x, pw), 5 if FAST else 10)
    assert np.allclose(qmatmul(x, pw), y_ref, rtol=1e-4, atol=1e-4)
t_blas = best_time(lambda: x @ W.T, 5 if FAST else 10)              # float32 W through BLAS
t_deq = best_time(lambda: x @ dequantize(pw).T, 2 if FAST else 3)   # dequantize all, then BLAS

results = {  # name: (seconds, bytes of weights moved, flops)
    "python loop (q4_0)": (t_python, qt.nbytes, 2 * O * I),
    "NumPy twin (q4_0)": (t_twin, qt.nbytes, 2 * O * I),
    "dequantize + BLAS (q4_0)": (t_deq, qt.nbytes, 2 * O * I),
    "float32 BLAS": (t_blas, W.nbytes, 2 * O * I),
    "Numba fused (q4_0)": (t_numba, qt.nbytes, 2 * O * I),
}
print(f"{'version':<26}{'ms':>10}{'GB/s of weights':>17}{'GFLOP/s':>9}")
for name, (t, nbytes, flops) in results.items():
    print(f"{name:<26}{1e3 * t:>10.2f}{nbytes / t / 1e9:>17.2f}{flops / t / 1e9:>9.2f}")
speedup, bound = t_blas / t_numba, 32 / 4.5
print(f"fused q4_0 vs float32 BLAS: {speedup:.1f}x faster (the byte ratio 32/4.5 = {bound:.1f}x bounds it)")
if speedup > 1.1 * bound:
    print(f"  FLAG: {speedup:.1f}x is above the {bound:.1f}x bound, so it is a measurement artifact, not a "
          f"real speed-up: the BLAS timing was slowed (another program on the cores, or BLAS threads "
          f"waiting for a busy core). Rerun on a quiet machine.")
load, cores = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0, os.cpu_count() or 1
if load > 0.75 * cores:
    print(f"  WARNING: the machine is loaded (1-minute load average {load:.1f} on {cores} cores): "
          f"every timing above may be slowed, and unevenly; compare ratios from one quiet run only.")

# %% [markdown]
# ## 3. This machine's ceilings
# `minimoe.bench.machine_peaks()` measures them once and caches them (`minimoe bench machine`):
# a parallel copy of a large array (bytes read + written per second) and a 2048^3 float32 matmul.

# %%
peaks = machine_peaks(quick=FAST)
print(f"copy bandwidth {peaks['copy_gbs']:.1f} GB/s, read bandwidth {peaks['read_gbs']:.1f} GB/s, "
      f"float32 matmul {peaks['sgemm_gflops']:.0f} GFLOP/s  ({peaks['cpu']}, {peaks['cores']} cores)")

# %% [markdown]
# ## 4. The roofline
# A kernel's arithmetic intensity is flops per byte it must move. A GEMV does 2 flops per weight:
# 0.5 flop/byte for float32, 2 / 0.5625 = 3.6 for q4_0. Below the ridge point (peak / bandwidth)
# the memory roof is the limit: time = bytes / bandwidth. A batch of 64 rows (prefill) reuses each
# weight 64 times: intensity 64x higher, and the compute roof takes over.

# %%
Xb = rng.standard_normal((64 if not FAST else 16, I)).astype(np.float32)
t_pre = best_time(lambda: qmatmul(Xb, pw), 2 if FAST else 3)
t_pre_blas = best_time(lambda: Xb @ W.T, 2 if FAST else 3)
points = {name: (flops / nbytes, flops / t / 1e9) for name, (t, nbytes, flops) in results.items()}
points[f"Numba q4_0, batch {len(Xb)}"] = (2 * len(Xb) * O * I / qt.nbytes, 2 * len(Xb) * O * I / t_pre / 1e9)
points[f"float32 BLAS, batch {len(Xb)}"] = (2 * len(Xb) * O * I / W.nbytes, 2 * len(Xb) * O * I / t_pre_blas / 1e9)

bw, peak = peaks["read_gbs"], peaks["sgemm_gflops"]
ai = np.logspace(-1.5, 3, 200)
fig, ax = plt.subplots(figsize=(8, 5))
ax.loglog(ai, np.minimum(peak, bw * ai), "k-", lw=2, label=f"roof: {bw:.0f} GB/s read, {peak:.0f} GFLOP/s")
ax.loglog(ai, np.minimum(peak, peaks["copy_gbs"] / 2 * ai), "k:", lw=1, label="copy bandwidth / 2 (read side)")
for name, (a, g) in points.items():
    ax.loglog([a], [g], "o", ms=8, label=f"{name}: {g:.1f} GFLOP/s")
ax.set_xlabel("arithmetic intensity (flops per byte of weights)")
ax.set_ylabel("achieved GFLOP/s")
ax.set_title(f"GEMV over a {O} x {I} weight on this machine")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=7, loc="lower right")
fig.tight_layout()
path = os.path.join(OUT, "05_roofline.png")
fig.savefig(path, dpi=120)
print("saved", path)

# %% [markdown]
# ## 5. Bytes per second, against the copy bandwidth
# Effective GB/s counts the bytes each version had to read. The fused kernel reads 7.1x fewer
# bytes than float32 BLAS; whether it also streams them as fast is the kernel's quality.

# %%
fig, ax = plt.subplots(figsize=(8, 3.8))
names = list(results)
gbs = [results[n][1] / results[n][0] / 1e9 for n in names]
ax.barh(names, gbs, color=["#bbb", "#9cf", "#fc9", "#f99", "#6c6"])
ax.axvline(peaks["read_gbs"], color="k", ls="--", label=f"read bandwidth {peaks['read_gbs']:.0f} GB/s")
ax.set_xscale("log")
ax.set_xlabel("GB/s of weight bytes")
ax.legend(fontsize=8)
fig.tight_layout()
path = os.path.join(OUT, "05_bandwidth.png")
fig.savefig(path, dpi=120)
print("saved", path)

# %% [markdown]
# ## 6. Which bandwidth? The cache curve
# "The" read bandwidth depends on how many bytes are read again and again. A working set that
# fits in the CPU's caches is read several times faster than one that streams from DRAM.
# `machine_peaks()` also measures that curve (`read_gbs_by_mib`). Decoding many tokens touches
# every expert, so the model's whole size is the working set. Look it up on the curve and divide
# by the bytes one token reads: that is the fastest decode this machine allows
# (`minimoe bench decode` prints it beside each measured speed).

# %%
from minimoe.bench.machine import read_gbs_for
from minimoe.inspect.estimate import estimate

curve = {float(k): v for k, v in peaks["read_gbs_by_mib"].items()}
mini = minimoe.Config.preset("mixtral-mini")
print(f"{'mixtral-mini':<14}{'model MB':>10}{'MB/token':>10}{'read GB/s':>11}{'ceiling tok/s':>15}")
sizes = {}
for recipe in ("fp32", "q8_0", "q4_0"):
    e = estimate(mini, recipe=recipe, context=384)                   # what one decode token reads
    gbs = read_gbs_for(peaks, e["weight_bytes"])
    sizes[recipe] = e["weight_bytes"]
    print(f"{recipe:<14}{e['weight_bytes'] / 1e6:>10.0f}{e['bytes_per_token'] / 1e6:>10.1f}{gbs:>11.1f}"
          f"{gbs * 1e9 / e['bytes_per_token']:>15.0f}")

fig, ax = plt.subplots(figsize=(8, 3.8))
ax.semilogx(list(curve), list(curve.values()), "o-", label="parallel read, this machine")
for (recipe, nbytes), color in zip(sizes.items(), ("C3", "C1", "C2")):
    ax.axvline(nbytes / 2**20, color=color, ls="--", label=f"mixtral-mini {recipe}: {nbytes / 2**20:.0f} MiB")
ax.set_xlabel("working set (MiB)")
ax.set_ylabel("read GB/s")
ax.set_ylim(bottom=0)
ax.legend(fontsize=8)
fig.tight_layout()
path = os.path.join(OUT, "05_cache_curve.png")
fig.savefig(path, dpi=120)
print("saved", path)

# %% [markdown]
# On the machine this tutorial was written on (a 2-core share of a server CPU), the knee moved
# with the neighbours' load: in one hour reads ran at about 25 GB/s up to 48 MiB and 8-11 GB/s
# from 64 MiB on, so mixtral-mini in q4_0 (86 MB) streamed from DRAM; an hour later the knee sat
# past 96 MiB and the same model was read from cache. The float32 model (608 MB) always streams
# from DRAM. (The smallest sizes read slowly for another reason: a 1 MiB read takes tens of
# microseconds, about what it costs to start a parallel loop.) A 4-bit model is faster for two
# reasons: fewer bytes per token, and a smaller
# working set that may fit in a faster level of the hierarchy.

# %% [markdown]
# ## 7. What the scaling benchmark shows
# `minimoe bench moe-scaling` decodes with 4 to 64 experts at top-2, active parameters fixed.
# On a model small enough to sit in the CPU caches, the time per token stays flat: the code does
# the same work per token whatever E is (one router row of E logits aside). On `mixtral-mini`
# the 64-expert model no longer fits in cache, and each token's 2 experts per layer come from
# main memory: the time grows with the memory hierarchy, not with the parameter count. In both,
# compute follows active parameters, not total ones.
#
# Try it: `minimoe bench kernels`, `minimoe bench decode --preset mixtral-mini`, and step into any
# kernel with `MINIMOE_BACKEND=numpy` (docs/kernels.md).

# %% [markdown]
# ## 8. Int8 activations: what llama.cpp does, and how the roofline moves
# The fused kernel above still does float arithmetic: each 4-bit code becomes a float32 and meets
# x in a float multiply-add, 16 of them per 512-bit instruction, plus the decoding around it. On a
# big matrix that is slower than the bytes arrive. llama.cpp rounds **x** to 8 bits as well (Q8_0:
# per block of 32, `dx = amax / 127`, `qx = round(x / dx)`), and then multiplies bytes by bytes.
# Per block only integers remain until one final scale: `y += dw * dx * sum_j v_j * qx_j`.

# %%
from minimoe.kernels import int8matmul, vnni

qx = np.empty((1, I), np.int8)
dx, sx = np.empty((1, I // 32), np.float32), np.empty((1, I // 32), np.float32)
int8matmul.quantize_q8_0(x, qx, dx, sx)                 # llama.cpp's quantize_row_q8_0
print("x, block 0:", np.round(x[0, :6], 3), "...")
print(f"dx = amax/127 = {dx[0, 0]:.5f};  qx = round(x/dx):", qx[0, :6], "...")
print(f"largest rounding error |x - dx*qx| in block 0: {np.abs(x[0, :32] - dx[0, 0] * qx[0, :32]).max():.5f}"
      f" (at most dx/2 = {dx[0, 0] / 2:.5f})")

# %% [markdown]
# The instruction that makes it pay is x86's `vpdpbusd` (AVX512-VNNI, or AVX-VNNI on 256-bit
# vectors). In each 32-bit lane it multiplies 4 unsigned bytes by 4 signed bytes and adds the four
# products to a 32-bit sum: 64 multiply-adds per instruction instead of 16. `minimoe/kernels/vnni.py`
# reaches it from Numba with `numba.extending.intrinsic` (a few lines of LLVM IR); its twin
# `dot4_numpy` says what it computes. Here is one lane: bytes (1, 2, 3, 4) times (10, -20, 30, -40).

# %%
acc = np.zeros(16, np.int32)
a_words = np.zeros(16, np.uint32)
b_words = np.zeros(16, np.int32)
a_words[0] = np.frombuffer(np.array([1, 2, 3, 4], np.uint8).tobytes(), np.uint32)[0]
b_words[0] = np.frombuffer(np.array([10, -20, 30, -40], np.int8).tobytes(), np.int32)[0]
vnni.dot4_numpy(acc, 0, a_words, 0, b_words, 0)
print("lane 0:", acc[0], "= 1*10 + 2*(-20) + 3*30 + 4*(-40)")
print("this CPU runs:", vnni.int8_dot(), "(vnni512, vnni256, or the portable integer loops)")

# %% [markdown]
# Now the same GEMV both ways, on the numba backend, with the switch
# `minimoe.set_activation_precision` ("auto", the default, picks int8 where the CPU has VNNI).

# %%
with minimoe.backend("numba"):
    minimoe.set_activation_precision("int8")
    y_int8 = qmatmul(x, pw)
    t_int8 = best_time(lambda: qmatmul(x, pw), 5 if FAST else 10)
    minimoe.set_activation_precision("float")
    t_float = best_time(lambda: qmatmul(x, pw), 5 if FAST else 10)
bound = np.abs(qt.dequantize()) @ np.abs(x[0])                   # (O,) sum |w x|
assert np.all(np.abs(y_int8[0] - y_ref[0]) <= 2 ** -8 * bound + 1e-4)
print(f"int8 activations: max |y_int8 - y_float| = {np.abs(y_int8 - y_ref).max():.2e} "
      f"(|y| up to {np.abs(y_ref).max():.2f})")
speeds = {"float32 BLAS": W.size / t_blas / 1e9, "fused q4_0, float x": W.size / t_float / 1e9,
          "int8 fused (q4_0)": W.size / t_int8 / 1e9}
for name, v in speeds.items():
    print(f"{name:<22}{v:>8.1f} G weights/s")
print(f"int8 vs float activations: {t_float / t_int8:.2f}x")

# %% [markdown]
# **How the roofline moves.** Per weight, a GEMV does one multiply-add whatever the format; what
# changes is the ceiling on each side. The memory roof in weights per second is the bandwidth
# divided by the bytes per weight: 7.1x higher for q4_0 than for float32. The compute roof is how
# many weights the core can *decode and multiply* per second: the float kernel spends several
# instructions per 16 weights, the int8 kernel about one `vpdpbusd` per 64. Raising the compute
# roof is what lets a 4-bit GEMV reach its (higher) memory roof. On a busy or small machine the
# measured points sit below both roofs; the dashed lines are this machine's memory roofs.

# %%
fig, ax = plt.subplots(figsize=(8, 3.6))
ax.barh(list(speeds), list(speeds.values()), color=["#bbb", "#fc9", "#6c6"])
for bits, color, label in ((32, "C3", "float32"), (4.5, "C2", "q4_0")):
    ax.axvline(peaks["read_gbs"] * 8 / bits, color=color, ls="--",
               label=f"memory roof, {label}: {peaks['read_gbs'] * 8 / bits:.0f} G weights/s")
ax.set_xscale("log")
ax.set_xlabel("G weights per second (one GEMV, batch 1)")
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
path = os.path.join(OUT, "05_int8.png")
fig.savefig(path, dpi=120)
print("saved", path)
minimoe.set_activation_precision("auto")

# %% [markdown]
# ## 9. Fewer, larger calls: weights that read the same x
# A decode step multiplies one row of x by dozens of small matrices, and each call pays a fixed
# cost: Python's checks, rounding x to int8, and waking the second core. Where several weights read
# the *same* x (an attention layer's q, k and v; an MoE layer's gate and up for its K experts),
# `minimoe.nn.linear.forward_many` hands them to one leaf. The NumPy twin still multiplies them one
# after the other; on the numba backend, with int8 activations, one kernel call rounds x once and
# one parallel loop covers every weight's rows. The model's attention and FFN use it.

# %%
import numba

from minimoe.nn import linear

rng = np.random.default_rng(1)
C = 512
ws = [quant.quantize(rng.standard_normal((O, C)).astype(np.float32) * 0.05, "q4_0")
      for O in (512, 128, 128)]                                    # q, k, v of a small model
xr = rng.standard_normal((1, C)).astype(np.float32)
with minimoe.backend("numba"):
    minimoe.set_activation_precision("int8")
    fused, _ = linear.forward_many(xr, ws, [None] * 3)
    apart = [linear.forward(xr, w)[0] for w in ws]
    t_fused = best_time(lambda: linear.forward_many(xr, ws, [None] * 3), 50)
    t_apart = best_time(lambda: [linear.forward(xr, w) for w in ws], 50)
    minimoe.set_activation_precision("auto")
for a, b in zip(fused, apart):
    assert np.allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())
print(f"q, k, v one call: {t_fused * 1e6:.0f} us; three calls: {t_apart * 1e6:.0f} us "
      f"({t_apart / t_fused:.2f}x)")
print("Numba's threading layer:", numba.threading_layer(),
      "(OpenMP told not to spin where Numba has it: docs/kernels.md, 'Threads')")
