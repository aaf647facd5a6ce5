# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 04c · Out to transformers and llama.cpp, and back from a `.gguf` file
#
# A model trained in minimoe is only useful to others if it runs where they work: **transformers**
# (and vLLM) read a Hugging Face folder, **llama.cpp** (and ollama) read one GGUF file. Here we
# train a tiny model for a few steps, write it both ways, read each back with `minimoe.load`, and
# check that nothing was lost:
#
# * minimoe -> Hugging Face folder -> minimoe: every tensor bit for bit, the same logits;
# * minimoe -> GGUF (f32, q8_0, q4_0) -> minimoe: float tensors bit for bit, packed tensors the
#   same bytes as `minimoe.quant` makes, the same config;
# * and what llama.cpp computes differently from minimoe even on the same bytes: it rounds the
#   **activations** to Q8_0 before every packed matmul (docs/export.md).
#
# When `transformers` (with torch) or `llama_cpp` (llama-cpp-python) can be imported, their cells
# compare logits and greedy tokens with minimoe's; when not, they say how to install them and skip.
# Writing GGUF needs the `gguf` package (`pip install gguf`, in minimoe's `test` extra).
#
# Files go under `./minimoe_out/04c/` in the working directory (or `$MINIMOE_TUTORIAL_OUT/04c`).
# `MINIMOE_FAST=1` (what the tests run) trains for 30 steps instead of 300.
#
# Shape legend: B batch, T time, C d_model, E experts, F expert width, V vocab.

# %%
import json
import os

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

import minimoe
from minimoe import quant
from minimoe.cli import main as minimoe_cli
from minimoe.io import safetensors_file
from minimoe.train.loop import TrainConfig, Trainer

if os.environ.get("MPLBACKEND") is None and not hasattr(__builtins__, "__IPYTHON__"):
    matplotlib.use("Agg")                 # a script saves its figures; a notebook also shows them
FAST = os.environ.get("MINIMOE_FAST") == "1"
OUT = os.path.join(os.environ.get("MINIMOE_TUTORIAL_OUT", os.path.join(os.getcwd(), "minimoe_out")), "04c")
os.makedirs(OUT, exist_ok=True)

# %% [markdown]
# ## 1. A small trained model
#
# The `tiny-moe` preset (2 layers, width 32, 4 experts, top-2) with the character tokenizer,
# trained on the text built into minimoe. The run folder (`config.json`, `model.safetensors`,
# `tokenizer.json`) is a minimoe checkpoint: `minimoe.load` and the CLI read it.

# %%
CKPT = os.path.join(OUT, "run")
tc = TrainConfig(preset="tiny-moe", batch_size=8, block_size=32, eval_iters=4, sample_tokens=0,
                 max_iters=30 if FAST else 300, eval_interval=30 if FAST else 100, ckpt_interval=0,
                 threads=1, lr=3e-3, warmup_iters=5, seed=0, out=CKPT)
trainer = Trainer.new(tc, verbose=False)
trainer.run()
model = trainer.model
print(model)
print(f"val loss after {tc.max_iters} steps: {trainer.history[-1]['val_loss']:.3f}")
text = "First Citizen:\nBefore we proceed any further, hear me speak."
tokens = model.tokenizer.encode(text)[None, :48]          # (B=1, T)
logits = model(tokens)                                    # (1, T, V)

# %% [markdown]
# ## 2. Out to Hugging Face
#
# `model.save_hf(folder)` picks the plainest Hugging Face family that computes exactly what the
# config says. minimoe's presets route with a softmax over the top-k, renormalised, and have no
# biases or q/k norms: that is **Mixtral**. The folder holds `config.json` (Mixtral's field names),
# `model.safetensors` (one tensor per expert, under the Hub's names) and `tokenizer.json`.

# %%
HF = os.path.join(OUT, "hf")
family = model.save_hf(HF)
print("family:", family, "  files:", sorted(os.listdir(HF)))
with open(os.path.join(HF, "config.json"), encoding="utf-8") as f:
    hf_config = json.load(f)
print({k: hf_config[k] for k in ("model_type", "hidden_size", "num_local_experts", "num_experts_per_tok")})
hub_names = sorted(safetensors_file.read_tensors(os.path.join(HF, "model.safetensors"))[0])
print(len(hub_names), "tensors, e.g.", [n for n in hub_names if n.startswith("model.layers.0.block_sparse_moe")][:4])

# %% [markdown]
# minimoe stacks the experts of a layer into one array, `(E, F, C)`; Mixtral writes each expert's
# `w1` (gate), `w3` (up) and `w2` (down) separately. Reading the folder back restacks them.
# **The round trip is exact**: every tensor bit for bit, the logits equal.

# %%
back = minimoe.load(HF)
hf_exact = all(np.array_equal(back.params[name], w) for name, w in model.params.items())
print("minimoe -> HF -> minimoe, every tensor bit for bit:", hf_exact)
print("same logits:", np.array_equal(back(tokens), logits))
print("same token ids:", np.array_equal(back.tokenizer.encode(text), model.tokenizer.encode(text)))

# %% [markdown]
# The command line does the same from the checkpoint folder: `minimoe export --to hf --model
# CKPT --out DIR`. It writes the same bytes.

# %%
HF_CLI = os.path.join(OUT, "hf_cli")
minimoe_cli(["export", "--to", "hf", "--model", CKPT, "--out", HF_CLI])
same_files = all(open(os.path.join(HF, f), "rb").read() == open(os.path.join(HF_CLI, f), "rb").read()
                 for f in os.listdir(HF))
print("save_hf and `minimoe export --to hf` wrote identical files:", same_files)

# %% [markdown]
# ### In transformers
#
# `AutoModelForCausalLM.from_pretrained(folder)` builds a `MixtralForCausalLM` from the folder.
# Its float32 logits should equal minimoe's to ~1e-7 (float32 rounding in another order of
# operations; docs/export.md measures 7e-8 for Mixtral), so every greedy choice is the same.

# %%
try:
    import torch
    import transformers
except ImportError:
    torch = transformers = None
    print("transformers is not installed: skipped. To run this cell: pip install torch transformers")
if transformers is not None:
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(HF, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf_model(torch.from_numpy(tokens)).logits.numpy()       # (1, T, V)
    print(f"transformers vs minimoe: max |Δlogit| = {np.abs(theirs - logits).max():.2g}")
    print("greedy next token equal at every position:",
          np.array_equal(theirs.argmax(-1), logits.argmax(-1)))
    hf_tok = transformers.AutoTokenizer.from_pretrained(HF)
    print("AutoTokenizer gives minimoe's ids:",
          hf_tok(text, add_special_tokens=False)["input_ids"] == model.tokenizer.encode(text).tolist())

# %% [markdown]
# ## 3. Out to GGUF, and back
#
# `model.save_gguf(path, recipe=...)` writes one file for llama.cpp. The recipe packs the
# attention matrices, the experts and the output head; norms, the router and the embedding table
# stay F32. We write three recipes and read each back with `minimoe.load("x.gguf")`: packed
# tensors **stay packed** (`QTensor`s that run through minimoe's fused kernels).

# %%
RECIPES = ["f32", "q8_0", "q4_0"]
gguf_models, sizes = {}, {}
for recipe in RECIPES:
    path = model.save_gguf(os.path.join(OUT, f"tiny-{recipe}.gguf"), recipe=recipe)
    gguf_models[recipe] = minimoe.load(path)
    sizes[recipe] = os.path.getsize(path)
    kinds = {type(t).__name__ for t in gguf_models[recipe].params.values()}
    print(f"{recipe:5s} {sizes[recipe]:8,d} bytes   tensors read back as {sorted(kinds)}")

# %% [markdown]
# **What came back.** Float tensors bit for bit; each packed tensor holds exactly the bytes that
# `quant.quantize(w, recipe)` makes from the original float weight.
#
# The config comes back equal but for `name` (taken from the file name). One field needed care:
# `tiny-moe` has `d_ff = 64`, the width a *dense* FFN layer would have, and `d_expert = 32`. Every
# layer here is MoE, so `d_ff` is never used, and llama.cpp's `llama` architecture has a single
# `feed_forward_length`, which holds the expert width; minimoe adds its own key,
# `minimoe.feed_forward_length`, for `d_ff` (llama.cpp ignores keys it does not know).

# %%
gguf_exact = {}
for recipe, m in gguf_models.items():
    ok = True
    for name, w in model.params.items():
        t = m.params[name]
        ok &= np.array_equal(t, w) if isinstance(t, np.ndarray) else \
            np.array_equal(t.blocks, quant.quantize(w, recipe).blocks)
    gguf_exact[recipe] = bool(ok)
    ours_cfg, back_cfg = model.config.to_dict(), m.config.to_dict()
    differ = {k: (ours_cfg[k], back_cfg[k]) for k in ours_cfg if ours_cfg[k] != back_cfg[k]}
    print(f"minimoe -> GGUF {recipe} -> minimoe, every tensor exact: {gguf_exact[recipe]}; "
          f"config fields that differ: {differ}")
print("f32 file: same logits as the trained model:", np.array_equal(gguf_models["f32"](tokens), logits))

# %% [markdown]
# **The bytes in the file.** Open the q4_0 file with the `gguf` package, llama.cpp's own Python
# reader, and compare one expert tensor's raw bytes with minimoe's packed blocks. Each Q4_0 block
# is 18 bytes: an fp16 scale, then 16 bytes of 4-bit codes (tutorial 04). The names are
# llama.cpp's: `blk.0.ffn_up_exps.weight` is minimoe's `layers.0.moe.experts.up`.

# %%
import gguf  # noqa: E402  (needed for save_gguf above too)

reader = gguf.GGUFReader(os.path.join(OUT, "tiny-q4_0.gguf"))
t = next(t for t in reader.tensors if t.name == "blk.0.ffn_up_exps.weight")
ours = quant.quantize(model.params["layers.0.moe.experts.up"], "q4_0")
file_bytes = np.asarray(t.data).tobytes()
print(t.name, t.tensor_type.name, "ggml shape", [int(n) for n in t.shape], f"{len(file_bytes):,} bytes")
print("file bytes == minimoe's packed blocks:", file_bytes == ours.blocks.tobytes())
d = np.frombuffer(file_bytes[:2], np.float16)[0]                     # the block's fp16 scale
codes = np.frombuffer(file_bytes[2:18], np.uint8)                      # 16 bytes, 32 nibbles
first = (np.concatenate([codes & 0x0F, codes >> 4]).astype(np.float32) - 8) * np.float32(d)   # (32,)
print("first block:", file_bytes[:18].hex(" "))
print("decoded by hand == minimoe's first 32 weights:", np.array_equal(first, ours.dequantize().ravel()[:32]))

# %% [markdown]
# Some metadata llama.cpp reads (the llama architecture, with experts; a character tokenizer is
# written as a byte-level "gpt2" vocabulary with no merges):

# %%
for key in ("general.architecture", "llama.expert_count", "llama.expert_used_count",
            "llama.embedding_length", "tokenizer.ggml.model"):
    print(f"{key:28s} {reader.fields[key].contents()}")
print("tokens in the vocabulary:", len(reader.fields["tokenizer.ggml.tokens"].contents()))

# %% [markdown]
# One more thing the file changes: llama.cpp's `llama` architecture rotates **neighbouring pairs**
# in RoPE, minimoe (and transformers) rotate **halves**. So `save_gguf` permutes the rows of q and
# k per head (row j -> 2j, row j + D/2 -> 2j + 1), as `convert_hf_to_gguf.py` does, and `minimoe.load`
# undoes it. Row 1 of the stored q is row D/2 of minimoe's:

# %%
D = model.config.head_dim
q_file = np.asarray(next(t for t in gguf.GGUFReader(os.path.join(OUT, "tiny-f32.gguf")).tensors
                         if t.name == "blk.0.attn_q.weight").data)                    # (H*D, C)
q_ours = model.params["layers.0.attn.q.weight"]                                       # (H*D, C)
print(f"D = {D}: file row 1 == minimoe row {D // 2}:", np.array_equal(q_file[1], q_ours[D // 2]))

# %% [markdown]
# ## 4. What llama.cpp computes differently
#
# Same bytes do not mean same numbers. For a packed weight, ggml's CPU matmul does not multiply
# float activations by the decoded weight: it first rounds each block of 32 **activations** to
# Q8_0 (one fp16 scale `amax/127`, 32 int8 values, its `vec_dot_type`), then takes integer dot
# products scaled by the two fp16 scales. minimoe multiplies float32 activations by the exactly
# decoded weights. Here is that difference on one matmul of the q4_0 model. (`quant.quantize`
# rounds halves away from zero, as ggml's reference `quantize_row_q8_0` does; its AVX2 code rounds
# them to even, which changes nothing here but a rare tie.)

# %%
W = gguf_models["q4_0"].params["layers.0.attn.q.weight"]                     # packed (H*D, C)
x = np.random.default_rng(0).standard_normal((16, W.shape[1])).astype(np.float32)   # (T, C) activations
y_minimoe = minimoe.matmul(x, W)                                             # (T, H*D) float x
x_q8 = quant.quantize(x, "q8_0").dequantize()                                # x as ggml sees it
y_ggml = x_q8 @ W.dequantize().T                                             # (T, H*D)
act_delta = float(np.abs(y_ggml - y_minimoe).max())
print(f"activation rounding moves this matmul's outputs by up to {act_delta:.2g} "
      f"(outputs ~{np.abs(y_minimoe).std():.2g})")

# %% [markdown]
# Through a whole model such changes add up to a few 1e-3 in the logits (docs/export.md:
# 2.5e-3 to 5.6e-3 on random tiny models). A greedy choice flips when its **top-2 margin** (best
# logit minus the runner-up) is smaller than that. The weight rounding of the recipe moves logits
# too. The histogram shows both against the margins of our trained model along the text: choices
# left of a line are the ones that could differ between engines or recipes.

# %%
top2 = np.sort(logits[0], axis=-1)[:, -2:]                                   # (T, 2)
margins = top2[:, 1] - top2[:, 0]                                            # (T,)
weight_delta = {r: float(np.abs(gguf_models[r](tokens) - logits).max()) for r in ("q8_0", "q4_0")}
for r, d in weight_delta.items():
    same = np.array_equal(gguf_models[r](tokens).argmax(-1), logits.argmax(-1))
    print(f"{r}: max |Δlogit| from the weight rounding {d:.2g}; greedy choices all equal: {same}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
packed_bytes = {r: sum(t.nbytes for t in m.params.values() if not isinstance(t, np.ndarray))
                for r, m in gguf_models.items()}
float_bytes = {r: sum(t.nbytes for t in m.params.values() if isinstance(t, np.ndarray))
               for r, m in gguf_models.items()}
ax1.bar(RECIPES, [float_bytes[r] / 1024 for r in RECIPES], label="stay F32 (norms, router, embedding)")
ax1.bar(RECIPES, [packed_bytes[r] / 1024 for r in RECIPES], bottom=[float_bytes[r] / 1024 for r in RECIPES],
        label="packed by the recipe")
ax1.set_ylabel("KiB of tensors")
ax1.set_title("what each recipe packs")
ax1.legend(fontsize=8)
ax2.hist(margins, bins=np.logspace(-4, 1, 26), color="0.6")
ax2.set_xscale("log")
lines = [("Q8_0 activations (one matmul)", act_delta)] + [(f"{r} weights", d) for r, d in weight_delta.items()]
for (label, d), c in zip(lines, ["C3", "C0", "C1"]):
    ax2.axvline(d, color=c, label=f"{label}: {d:.1g}")
ax2.set_xlabel("top-2 logit margin of the trained model")
ax2.set_ylabel("positions")
ax2.set_title("a greedy choice flips when the margin is below a line")
ax2.legend(fontsize=7, loc="upper left")
fig.tight_layout()
fig.savefig(os.path.join(OUT, "04c_recipes_and_margins.png"), dpi=110)
print("saved", os.path.join(OUT, "04c_recipes_and_margins.png"))

# %% [markdown]
# ### In llama.cpp
#
# With the f32 file nothing is rounded, so llama.cpp's logits equal minimoe's to float32
# rounding. With q4_0 they differ by the activation rounding above. tests/test_llama_cpp_export.py
# checks the exact version of this: minimoe with the same Q8_0 rounding of its activations
# matches llama.cpp to 1e-5, and greedy tokens agree for 64 steps. We use an F32 KV cache
# (llama.cpp's default F16 cache alone moves logits by ~1e-3).

# %%
try:
    import llama_cpp
except ImportError:
    llama_cpp = None
    print("llama_cpp is not installed: skipped. To run this cell: pip install llama-cpp-python "
          "(it builds ggml from source, ~20 minutes on 2 cores)")
if llama_cpp is not None:
    for recipe in RECIPES:
        llm = llama_cpp.Llama(model_path=os.path.join(OUT, f"tiny-{recipe}.gguf"), n_ctx=tokens.shape[1] + 1,
                              n_threads=2, n_gpu_layers=0, logits_all=True, verbose=False,
                              type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
        llm.eval(tokens[0].tolist())
        theirs = np.array(llm.scores[:tokens.shape[1]], dtype=np.float32)   # (T, V)
        ours = gguf_models[recipe](tokens)[0]                                # (T, V)
        print(f"{recipe:5s} llama.cpp vs minimoe: max |Δlogit| = {np.abs(theirs - ours).max():.2g}, "
              f"greedy choice equal at {int((theirs.argmax(-1) == ours.argmax(-1)).sum())}/{tokens.shape[1]} positions")

# %% [markdown]
# ## Summary
#
# * `model.save_hf(dir)` / `minimoe export --to hf`: a transformers folder of the matching family;
#   minimoe reads it back bit for bit.
# * `model.save_gguf(path, recipe=...)` / `minimoe export --to gguf`: a llama.cpp file whose packed
#   tensors are minimoe's bytes; `minimoe.load("x.gguf")` keeps them packed.
# * llama.cpp rounds activations to Q8_0 beside packed weights: logits move by ~1e-3, enough to
#   flip near-tied choices of an untrained model, not the confident ones of a trained one.

# %%
print("round trips exact: HF", hf_exact, "| GGUF", gguf_exact)
