#!/usr/bin/env python
"""Issue 7's decode targets, measured against the peers in one run on this machine.

minimoe, Hugging Face transformers (PyTorch eager, fp32) and llama.cpp (F32, Q8_0, Q4_0) decode
the same model: the preset with minimoe's random weights (seed 0), exported by peer_models.py.
The peers are not minimoe dependencies and CI does not run this. Set up once:

    python -m venv /tmp/peers --system-site-packages
    /tmp/peers/bin/pip install --find-links /opt/wheels torch==2.13.0 transformers   # CPU wheel on disk
    CMAKE_BUILD_PARALLEL_LEVEL=2 CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON \
        -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON \
        -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
        -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF" \
        nice -n 19 /tmp/peers/bin/pip install llama-cpp-python==0.3.36                # ~20 min, 2 cores

Why not the default (native) llama.cpp build: this CPU reports AMX (amx_tile, amx_int8), so
-march=native compiles llama.cpp's AMX kernels, and the sandbox here kills the process with
SIGILL at the first AMX instruction (`tilezero`, in ggml_backend_amx_mul_mat) as soon as a
Q8_0 or Q4_0 model multiplies. The flags above are the native set without AMX.

then, from the repository root:

    /tmp/peers/bin/python tests/benchmarks/compare_decode_peers.py [--json FILE] [--skip hf|llamacpp]
    /tmp/peers/bin/python tests/benchmarks/compare_decode_peers.py --new-tokens 16      # a quick check

Shape legend: P prompt tokens, N new tokens, V vocab.

Every runtime does the same thing, timed in two parts, as `minimoe bench decode` does:
    prefill   one forward pass over a P-token prompt of random ids (seed 0), filling a KV cache
    decode    N greedy steps of one token each, through the KV cache
after a warm-up (the same prompt and 2 steps: every path the timed run takes has run once, so
minimoe has loaded its compiled kernels from Numba's cache). Each runtime runs in its own subprocess, one
after the other, never two at once, with `--threads` threads (2):
    minimoe     minimoe.bench.decode.run, recipes fp32, q8_0, q4_0, numba backend
    HF          MixtralForCausalLM in float32, torch.set_num_threads; a manual loop through its
                KV cache (what generate(do_sample=False) does, without its bookkeeping).
                "eager" is attn_implementation="eager" with the Python loop over experts (the
                numbers issue 7 quotes); "sdpa+grouped_mm" is a fresh model's default, for reference
    llama.cpp   llama-cpp-python, n_threads = n_threads_batch, n_batch = n_ubatch >= P (the prompt
                is one batch), logits of the last token only, greedy argmax in NumPy. Its own
                defaults otherwise: F16 KV cache (--llama-kv-f32 for F32, as minimoe and HF keep
                it), no flash attention (--llama-flash-attn)

The GGUF files are written once into --dir (default /tmp/minimoe_peers) and reused.
`--rounds R` repeats the whole sequence R times and reports each runtime's median.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import peer_models  # noqa: E402  (beside this file)

MINIMOE_RECIPES = ("fp32", "q8_0", "q4_0")
HF_VARIANTS = {"eager": ("eager", "eager"), "sdpa+grouped_mm": ("sdpa", "grouped_mm")}


# --- timing, shared by the peers -------------------------------------------------------------------
def time_decode(prefill, step, prompt: list[int], new_tokens: int) -> dict:
    """prefill(prompt) -> first new token; step(token) -> next token. Tokens/s of each part.

    The same measurement as minimoe.bench.decode.time_generate, with the same keys.
    """
    P = len(prompt)
    t0 = time.perf_counter()
    nxt = prefill(prompt)
    t1 = time.perf_counter()
    tokens, steps = [nxt], []
    for _ in range(new_tokens):
        s = time.perf_counter()
        nxt = step(nxt)
        steps.append(time.perf_counter() - s)
        tokens.append(nxt)
    return {"prefill_tok_s": P / (t1 - t0), "decode_tok_s": new_tokens / sum(steps) if steps else None,
            "decode_ms_median": 1e3 * float(np.median(steps)) if steps else None,
            "prompt_tokens": P, "new_tokens": new_tokens, "tokens": [int(t) for t in tokens[:-1]]}


def prompt_ids(vocab_size: int, n: int, seed: int) -> list[int]:
    """The prompt minimoe.bench.decode.run uses: n random ids from a seeded generator."""
    return np.random.default_rng(seed).integers(0, vocab_size, n).tolist()


# --- workers: each runs in its own process -----------------------------------------------------------
def work_minimoe(args) -> dict:
    from minimoe.bench.decode import run
    r = run(args.preset, recipes=MINIMOE_RECIPES, backends=("numba",), prompt_tokens=args.prompt_tokens,
            new_tokens=args.new_tokens, seed=args.seed, progress=lambda m: log(f"  minimoe: {m}"))
    out = {recipe: r["results"][recipe]["numba"] for recipe in MINIMOE_RECIPES}
    model = peer_models.minimoe_model(args.preset, args.seed)      # greedy tokens, for the agreement check
    prompt = np.asarray(prompt_ids(model.config.vocab_size, args.prompt_tokens, args.seed))
    out["fp32"]["tokens"] = model.generate(prompt, args.new_tokens)[args.prompt_tokens:].tolist()
    return {"results": out, "machine": r["machine"]}


def work_hf(args, variant: str) -> dict:
    import torch
    import transformers
    torch.set_num_threads(args.threads)
    attn, experts = HF_VARIANTS[variant]
    model = peer_models.minimoe_model(args.preset, args.seed)
    prompt = prompt_ids(model.config.vocab_size, args.prompt_tokens, args.seed)
    hf = peer_models.to_hf(model, attn, experts)
    del model
    state = {}

    def prefill(ids):
        out = hf(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1)   # logits (1, 1, V)
        state["cache"] = out.cache                                                    # a new DynamicCache
        return int(out.logits[0, -1].argmax())

    def step(tok):
        out = hf(input_ids=torch.tensor([[tok]]), cache=state["cache"], use_cache=True)
        state["cache"] = out.cache
        return int(out.logits[0, -1].argmax())

    with torch.inference_mode():
        time_decode(prefill, step, prompt, 2)                                         # warm-up
        result = time_decode(prefill, step, prompt, args.new_tokens)
    return {"results": {"fp32": result},
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "torch_threads": torch.get_num_threads(), "attn": attn, "experts": experts}}


def work_llamacpp(args, wtype: str) -> dict:
    import llama_cpp
    path = os.path.join(args.dir, f"{args.preset}-seed{args.seed}-{wtype}.gguf")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not written (the parent writes it before starting this worker)")
    P, N = args.prompt_tokens, args.new_tokens
    n_batch = max(512, P)                                    # the whole prompt is one batch
    kv = dict(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32) if args.llama_kv_f32 else {}
    llm = llama_cpp.Llama(model_path=path, n_threads=args.threads, n_threads_batch=args.threads,
                          n_ctx=P + N + 16, n_batch=n_batch, n_ubatch=n_batch, logits_all=False,
                          flash_attn=args.llama_flash_attn, n_gpu_layers=0, verbose=False, **kv)
    prompt = prompt_ids(llm.n_vocab(), P, args.seed)

    def prefill(ids):
        llm.reset()                                          # forget the previous sequence
        llm.eval(ids)
        return int(peer_models.llama_last_logits(llm).argmax())

    def step(tok):
        llm.eval([tok])
        return int(peer_models.llama_last_logits(llm).argmax())

    time_decode(prefill, step, prompt, 2)                    # warm-up
    result = time_decode(prefill, step, prompt, N)
    return {"results": {wtype: result},
            "versions": {"llama_cpp_python": llama_cpp.__version__, "n_threads": args.threads,
                         "n_batch": n_batch, "flash_attn": args.llama_flash_attn,
                         "kv_cache": "f32" if args.llama_kv_f32 else "f16",
                         "system_info": llama_cpp.llama_print_system_info().decode().strip()}}


def run_worker(args) -> dict:
    kind, _, variant = args.worker.partition(":")
    if kind == "minimoe":
        return work_minimoe(args)
    if kind == "hf":
        return work_hf(args, variant)
    if kind == "llamacpp":
        return work_llamacpp(args, variant)
    if kind == "gguf":
        model = peer_models.minimoe_model(args.preset, args.seed)
        return {"paths": peer_models.gguf_paths(model, args.dir, seed=args.seed, log=log)}
    raise ValueError(f"unknown worker {args.worker!r}")


# --- the parent: runs the workers one at a time -------------------------------------------------------
def log(msg: str):
    print(msg, file=sys.stderr, flush=True)


def spawn(args, worker: str) -> dict:
    """Run one worker in a fresh process; its result, or {"error": ...}."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker, "--worker-out", out,
               "--preset", args.preset, "--seed", str(args.seed), "--threads", str(args.threads),
               "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
               "--dir", args.dir] + (["--llama-flash-attn"] if args.llama_flash_attn else []) \
            + (["--llama-kv-f32"] if args.llama_kv_f32 else [])
        t0 = time.perf_counter()
        proc = subprocess.run(cmd)
        if proc.returncode != 0 or not os.path.exists(out):
            log(f"  {worker}: FAILED (exit code {proc.returncode}); see its messages above")
            return {"error": f"exit code {proc.returncode}"}
        with open(out, encoding="utf-8") as f:
            result = json.load(f)
        log(f"  {worker}: done in {time.perf_counter() - t0:.0f} s")
        return result


def median_result(runs: list[dict]) -> dict:
    """Each runtime's median over the rounds (the tokens of the first round)."""
    if len(runs) == 1:
        return runs[0]
    merged = dict(runs[0])
    for key in ("prefill_tok_s", "decode_tok_s", "decode_ms_median"):
        merged[key] = statistics.median(r[key] for r in runs)
        merged[key + "_rounds"] = [r[key] for r in runs]
    return merged


def collect(args) -> dict:
    workers = ["minimoe"]
    if "hf" not in args.skip:
        workers += [f"hf:{v}" for v in HF_VARIANTS]
    if "llamacpp" not in args.skip:
        log("GGUF files (written once, then reused)")
        prep = spawn(args, "gguf")
        if "error" in prep:
            raise SystemExit("could not write the GGUF files; run peer_models.py to see why")
        workers += [f"llamacpp:{t}" for t in peer_models.GGUF_TYPES]
    per_round: dict[str, list[dict]] = {}
    extra: dict[str, dict] = {}
    errors: dict[str, str] = {}
    for r in range(args.rounds):
        for w in workers:
            log(f"round {r + 1}/{args.rounds}: {w}")
            res = spawn(args, w)
            if "error" in res:
                errors[w] = res["error"]
                continue
            for weights, timing in res["results"].items():
                name = _row_name(w, weights)
                per_round.setdefault(name, []).append(timing)
            extra[w] = {k: v for k, v in res.items() if k != "results"}
    rows = {name: median_result(runs) for name, runs in per_round.items()}
    return {"preset": args.preset, "seed": args.seed, "threads": args.threads,
            "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "rounds": args.rounds,
            "load_average_1min_at_end": os.getloadavg()[0], "rows": rows, "workers": extra,
            "errors": errors, "ratios": ratios(rows)}


def _row_name(worker: str, weights: str) -> str:
    kind, _, variant = worker.partition(":")
    if kind == "minimoe":
        return f"minimoe {weights}"
    if kind == "hf":
        return f"HF {variant} fp32"
    return f"llama.cpp {weights}"


# (numerator row, denominator row, decode target, strict)
TARGETS = [("minimoe q4_0", "HF eager fp32", 2.0, False),
           ("minimoe q4_0", "llama.cpp q4_0", 0.5, False),
           ("minimoe fp32", "HF eager fp32", 1.0, True)]
MORE = [("minimoe q8_0", "llama.cpp q8_0"), ("minimoe fp32", "llama.cpp f32")]


def ratios(rows: dict) -> list[dict]:
    out = []
    for num, den, *target in TARGETS + [m + (None, None) for m in MORE]:
        if num not in rows or den not in rows:
            continue
        a, b = rows[num], rows[den]
        entry = {"numerator": num, "denominator": den,
                 "decode": a["decode_tok_s"] / b["decode_tok_s"],
                 "prefill": a["prefill_tok_s"] / b["prefill_tok_s"]}
        goal, strict = target
        if goal is not None:
            entry["decode_target"] = f"{'>' if strict else '>='} {goal:g}"
            entry["met"] = bool(entry["decode"] > goal if strict else entry["decode"] >= goal)
        out.append(entry)
    return out


def agreement(rows: dict) -> list[str]:
    """How many greedy tokens each float32 peer shares with minimoe fp32, from the start."""
    ref = rows.get("minimoe fp32", {}).get("tokens")
    lines = []
    for name in ("HF eager fp32", "HF sdpa+grouped_mm fp32", "llama.cpp f32"):
        toks = rows.get(name, {}).get("tokens")
        if ref and toks:
            n = next((i for i, (a, b) in enumerate(zip(ref, toks)) if a != b), min(len(ref), len(toks)))
            lines.append(f"  {name}: first {n} of {len(toks)} greedy tokens equal minimoe fp32's")
    return lines


def format_report(r: dict) -> str:
    lines = [f"{r['preset']} (minimoe random weights, seed {r['seed']}): {r['prompt_tokens']}-token prompt, "
             f"{r['new_tokens']} new tokens, greedy, {r['threads']} threads"
             + (f", median of {r['rounds']} rounds" if r["rounds"] > 1 else ""),
             f"  load average at the end: {r['load_average_1min_at_end']:.2f}", "",
             f"{'runtime':<28}{'prefill tok/s':>14}{'decode tok/s':>14}{'ms/token':>10}"]
    for name, t in r["rows"].items():
        lines.append(f"{name:<28}{t['prefill_tok_s']:>14.0f}{t['decode_tok_s']:>14.1f}"
                     f"{t['decode_ms_median']:>10.2f}")
    if r["ratios"]:
        lines += ["", "ratios (issue 7's decode targets; prefill beside):"]
        for e in r["ratios"]:
            target = (f"target {e['decode_target']}: {'met' if e['met'] else 'NOT met'}"
                      if "decode_target" in e else "(no target)")
            lines.append(f"  {e['numerator'] + ' / ' + e['denominator']:<34} decode {e['decode']:5.2f}x  "
                         f"{target:<22} prefill {e['prefill']:5.2f}x")
    same = agreement(r["rows"])
    if same:
        lines += ["", "greedy tokens (random weights give flat logits, so float32 round-off may "
                      "change a choice):"] + same
    from minimoe.bench.decode import PEERS
    lines += ["", "issue 7's peer numbers, measured at another time: " + "; ".join(
        f"{k} " + ", ".join(f"{kk} {vv}" for kk, vv in v.items()) for k, v in PEERS.items())]
    for w, err in r["errors"].items():
        lines.append(f"FAILED: {w}: {err}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=peer_models.PRESET)
    ap.add_argument("--seed", type=int, default=peer_models.SEED)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="repeat the whole sequence; report medians")
    ap.add_argument("--skip", action="append", default=[], choices=["hf", "llamacpp"],
                    help="leave a peer out (may be given twice)")
    ap.add_argument("--dir", default=peer_models.DEFAULT_DIR, help="where the GGUF files live")
    ap.add_argument("--llama-flash-attn", action="store_true",
                    help="llama.cpp with flash attention (llama-cpp-python's default is off)")
    ap.add_argument("--llama-kv-f32", action="store_true",
                    help="llama.cpp with an F32 KV cache (its default is F16)")
    ap.add_argument("--json", metavar="FILE", help="write the results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.prompt_tokens < 4 or args.new_tokens < 1 or args.rounds < 1 or args.threads < 1:
        ap.error("need --prompt-tokens >= 4, --new-tokens >= 1, --rounds >= 1 and --threads >= 1")

    if args.worker:
        result = run_worker(args)
        with open(args.worker_out, "w", encoding="utf-8") as f:
            json.dump(result, f)
        return 0

    r = collect(args)
    print(format_report(r))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(r, f, indent=1)
        print(f"\nwrote {args.json}")
    return 1 if r["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
