# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 12 · Debugger day: step one token through routing and through a 4-bit kernel
#
# minimoe is written to be stepped through. There is one forward pass (`Model.forward`), so the
# line a breakpoint sits on is the line that runs, for training, for the prompt and for every
# generated token. This lesson runs three debugger sessions and shows what each one prints. In
# a terminal you type the commands yourself; here the notebook feeds them to `pdb` on stdin, so
# it runs unattended (`tests/test_debugger_recipes.py` does the same with every recipe of the
# docs).
#
# **Objectives.** After this lesson you can (1) set a breakpoint that works from any directory
# and under `pip install -e`, (2) stop in the router for each generated token and read the experts
# it chose, (3) follow a 4-bit weight from its packed bytes to the matmul, two ways: the NumPy twin
# and the Numba kernel's own source run as Python.
#
# **Two pitfalls the old recipes fell into.** pdb's `b FILE:N` wants a line *number*:
# `b minimoe/nn/moe.py:forward_loop` answers "Bad lineno". And a relative path is looked up on
# `sys.path`, which under `pip install -e` does not hold the repository: "not found from
# sys.path". What always works: import the module at pdb's first prompt, then break on the
# function by its dotted name:
#
#     python -m pdb -c "import minimoe.nn.router" -c "b minimoe.nn.router.forward" -c c -m minimoe.cli generate --preset tiny-moe --prompt hi --max-new-tokens 2
#
# Shape legend: N tokens, E experts, K top-k, C width, I input width, O output rows.

# %%
import os
import subprocess
import sys

import minimoe

FAST = os.environ.get("MINIMOE_FAST") == "1"
OUT = os.environ.get("MINIMOE_TUTORIAL_OUT") or os.path.join(os.getcwd(), "minimoe_out")
os.makedirs(OUT, exist_ok=True)


def pdb_session(breakpoints, commands, cli_args, env=None, show=40):
    """Run `python -m pdb -m minimoe.cli ...` with `commands` typed at the (Pdb) prompt.
    breakpoints: dotted function names, each module imported first. Returns pdb's output."""
    args = [sys.executable, "-m", "pdb"]
    for target in breakpoints:
        module = target.rsplit(".", 2 if target.endswith(".numba") else 1)[0]
        args += ["-c", f"import {module}", "-c", f"b {target}"]
    args += ["-c", "c", "-m", "minimoe.cli", *cli_args]
    r = subprocess.run(args, input="\n".join(commands) + "\n", capture_output=True, text=True,
                       env=dict(os.environ, **(env or {})), timeout=600)
    text = r.stdout.split("The program exited")[0].split("The program finished")[0]   # pdb would restart it
    lines = [l.replace("(Pdb) ", "") for l in text.splitlines()]
    lines = [l if len(l) < 110 else l[:105] + " ..." for l in lines      # drop the long return values
             if l.strip() and "--Return--" not in l and ")->(" not in l and not l.startswith("       ")]
    print("\n".join(lines[:show]))
    return "\n".join(lines)


GENERATE = ["generate", "--preset", "tiny-moe", "--prompt", "hi", "--max-new-tokens", "2", "--seed", "0"]

# %% [markdown]
# ## 1. Stop in the router, once per layer per token
#
# `tiny-moe` has 2 MoE layers. The prompt "hi" is 2 bytes; `generate` runs the prompt as one
# forward pass, then one pass per new token. The commands below continue (`c`) from stop to stop,
# and at each stop print where we are and, after `r` (run to the return), the experts chosen:
# `forward` returns (weights, experts, stats, cache), so `__return__[1]` is experts (N, K). (We
# shorten pdb's long lines for the page.)

# %%
out = pdb_session(["minimoe.nn.router.forward"],
                  ["r", "p __return__[1].tolist()", "c"] * 6,
                  GENERATE, env={"MINIMOE_BACKEND": "numpy"}, show=30)
stops = [l for l in out.splitlines() if l.startswith("> ") and l.endswith("forward()")]
print(f"\nthe router stopped {len(stops)} times")

# %% [markdown]
# The prompt's stops show N = 2 rows (both prompt tokens are routed at once); the decode step's
# stops show N = 1. Two new tokens take two forward passes, not three: the first new token is
# sampled from the prompt pass's logits, the second from one decode step's. The breakpoint sits
# in the same `forward` for every one of them: there is no second "fast" forward pass to miss.

# %%
n_layers = minimoe.Config.preset("tiny-moe").n_layers
assert len(stops) >= 2 * n_layers and len(stops) % n_layers == 0, len(stops)
print(f"{len(stops) // n_layers} forward passes x {n_layers} MoE layers")

# %% [markdown]
# ## 2. A 4-bit weight, through the NumPy twin
#
# A float model never reaches a 4-bit kernel: `--recipe q4_0` packs every weight matrix into
# Q4_0 blocks first (18 bytes per 32 weights). With `MINIMOE_BACKEND=numpy` every leaf runs its
# NumPy twin; for a packed matrix the twin is `nn/linear.matmul`, which decodes the blocks
# (`minimoe/quant/q4_0.py: dequantize_blocks`) and multiplies. We stop in the decoder, look at
# one block's bytes, then climb (`up`) to see who asked for it:
#
#     MINIMOE_BACKEND=numpy python -m pdb -c "import minimoe.quant.q4_0" -c "b minimoe.quant.q4_0.dequantize_blocks" -c c -m minimoe.cli generate --preset tiny-moe --recipe q4_0 --prompt hi --max-new-tokens 2

# %%
out = pdb_session(["minimoe.quant.q4_0.dequantize_blocks"],
                  ["p b.shape", "p b[0].tolist()", "up", "up", "where"],
                  GENERATE + ["--recipe", "q4_0"], env={"MINIMOE_BACKEND": "numpy"}, show=40)
assert "dequantize_blocks()" in out

# %% [markdown]
# The first two bytes of the block are its float16 scale d, the other 16 hold 32 codes of 4 bits
# (tutorial 04 takes one apart). `where` shows the whole path: `generate` -> `Model.forward` ->
# the layer -> `linear.matmul` -> `QTensor.dequantize` -> here.
#
# ## 3. The Numba kernel's own source, as Python
#
# The twin tells you *what* the kernel computes. To debug the kernel itself (an index, a loop
# bound), `NUMBA_DISABLE_JIT=1` turns `@njit` into a no-op, so the kernel's source runs as plain
# (slow) Python. A kernel is a `Kernel` object pairing two functions; break on its `.numba` one:
#
#     NUMBA_DISABLE_JIT=1 python -m pdb -c "import minimoe.kernels.qmatmul" -c "b minimoe.kernels.qmatmul.gemv_q4_0.numba" -c c -m minimoe.cli generate --preset tiny-moe --recipe q4_0 --prompt hi --max-new-tokens 2

# %%
out = pdb_session(["minimoe.kernels.qmatmul.gemv_q4_0.numba"],
                  ["p x.shape, qs.shape, d.shape, experts.tolist()", "where"],
                  GENERATE + ["--recipe", "q4_0"], env={"NUMBA_DISABLE_JIT": "1"}, show=30)
assert "gemv_q4_0()" in out

# %% [markdown]
# x holds the R rows of activations (one per token, or per token and expert), qs the packed
# codes in the kernel's layout (`minimoe/kernels/packed.py`), d the scales, and `experts` which
# matrix of a stack each row uses: for an MoE layer, one call serves a token's K experts.
#
# ## 4. The same in VS Code
#
# `.vscode/launch.json` in the repository has these runs as debug configurations ("tutorial 01,
# NumPy twins", "generate 2 tokens, q4_0, NumPy twins", "... Numba kernels as Python", and "this
# tutorial, fast mode"). Open the folder, set a breakpoint by clicking left of a line number in
# `minimoe/nn/router.py`, choose a configuration in Run and Debug, and press F5. The configurations
# set `"justMyCode": false` so that the debugger steps into minimoe and NumPy.
#
# ## 5. Exercises
#
# 1. In session 1, add a condition so that pdb stops only in layer 1:
#    `b minimoe.nn.router.forward, layer == 1` does not work (forward has no `layer`); find the
#    caller that knows the layer with `up`, and break there instead.
# 2. In session 2, step (`n`) through `dequantize_blocks` and check by hand that the first
#    weight equals d * (code - 8).
# 3. `minimoe grade --start kv_cache_decode` starts the KV-cache exercise; debug your solution
#    with `python -m pdb kv_cache_decode.py` after adding a small driver at the bottom.
