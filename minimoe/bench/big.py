"""`minimoe bench big`: a model of real size on this machine, measured beside the estimator.

Shape legend: C d_model, F ffn width, E experts, K top-k, V vocab, P prompt tokens.

    minimoe bench big --preset gpt-oss-20b [--dir FOLDER] [--tokens 8]

1. Write a checkpoint with the real model's exact shapes and storage and random weights, streaming
   (minimoe/io/safetensors_file.py, write_streaming: a piece of a tensor at a time, so writing
   13 GB needs a few MB of memory), into FOLDER (default ./minimoe_out/big/PRESET). A complete
   checkpoint already there is reused. It is a minimoe checkpoint (minimoe's names and GGUF-layout
   blocks), byte for byte the size of the released one in each tensor's storage:

       gpt-oss-20b     routed experts MXFP4, everything else bf16            ~13 GB
       olmoe-1b-7b     bf16, quantized to q8_0 (or --recipe q4_0) while loading
       qwen3-30b-a3b   bf16, quantized to q4_0 while loading (61 GB on disk, 17 GB held)

2. In a child process (so that its peak RSS is the loading's and the decoding's alone): load it
   memory-mapped (minimoe.load, with the preset's recipe), run one token (position 0) and read
   which pages of each tensor it brought in (minimoe/io/pages.py), then decode `tokens` more
   greedily, timing each, and trace one of them for the bytes it read.

3. The estimator's prediction for this machine (minimoe.estimate with a recipe that says how the
   loaded model holds each tensor): memory needed, bytes read per token, and the bandwidth bound
   on tokens/s, from this machine's RAM and the read bandwidth `minimoe bench machine` measures.

Random weights route tokens arbitrarily, which is all a speed and memory measurement needs; the
text they produce is noise.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from minimoe.errors import MinimoeError

GB = 1e9
PIECE = 1 << 23                 # values written per piece (16 MB of bf16)
MXFP4_SCALE = 119               # e8m0 exponent of the random MXFP4 blocks: values up to 6 * 2^-8


@dataclass(frozen=True)
class Big:
    """How a preset is stored on disk (component -> packed format; the rest bf16) and the recipe
    that quantizes it while loading (None: held as stored)."""
    storage: dict = field(default_factory=dict)
    recipe: str | None = None
    on_disk: str = "bf16 on disk"


PRESETS = {
    "gpt-oss-20b": Big({"experts": "mxfp4"}, None, "as released: MXFP4 experts, bf16 elsewhere"),
    "olmoe-1b-7b": Big({}, "q8_0"),
    "qwen3-30b-a3b": Big({}, "q4_0"),
}


def describe(big: Big, recipe: str | None) -> str:
    """How the run holds the model: "bf16 on disk, q4_0 while loading" (the recipe actually used)."""
    return f"{big.on_disk}, " + (f"{recipe} while loading" if recipe else "held as stored")


# --- 1. the checkpoint --------------------------------------------------------------------------

def storage_format(cfg, name: str, shape, storage: dict) -> str:
    """'bf16', or the packed format `storage` gives this tensor's component (matrices only)."""
    from minimoe.params import component
    from minimoe.quant.model import is_matrix
    fmt = storage.get(component(name)) if is_matrix(name, shape) else None
    return fmt or "bf16"


def _bf16_pieces(name: str, shape, rng):
    """The bits of a bf16 tensor, a piece at a time: norm scales 1.0, biases and sinks 0, and
    weights with a random sign, mantissa and exponent 2^-10 .. 2^-7 (|w| < 0.016)."""
    n = int(np.prod(shape, dtype=np.int64))
    for start in range(0, n, PIECE):
        m = min(PIECE, n - start)
        if name.endswith("norm.weight"):
            yield np.full(m, 0x3F80, np.uint16)                        # 1.0
        elif name.endswith(("bias", "sinks")):
            yield np.zeros(m, np.uint16)
        else:
            u = np.frombuffer(rng.bytes(2 * m), np.uint16)             # (m,) random bits
            exponent = ((u >> 7) & np.uint16(3)) + np.uint16(117)      # 117..120: 2^-10 .. 2^-7
            yield (u & np.uint16(0x807F)) | (exponent << np.uint16(7))  # sign | exponent | mantissa


def _packed_pieces(fmt: str, shape, rng):
    """Random blocks of `fmt` (mxfp4 here): random codes, every block's scale MXFP4_SCALE."""
    from minimoe.quant import format_module
    spec = format_module(fmt)
    n_blocks = int(np.prod(shape, dtype=np.int64)) // spec.BLOCK_SIZE
    step = max(1, PIECE // spec.BLOCK_BYTES)
    for start in range(0, n_blocks, step):
        m = min(step, n_blocks - start)
        blocks = np.frombuffer(rng.bytes(m * spec.BLOCK_BYTES), np.uint8).reshape(m, spec.BLOCK_BYTES).copy()
        if fmt != "mxfp4":
            raise MinimoeError(f"bench big writes random mxfp4 blocks only, not {fmt}")
        blocks[:, 0] = MXFP4_SCALE                                    # (m, 17): byte 0 is the e8m0 scale
        yield blocks


def write_checkpoint(cfg, storage: dict, folder: str, seed: int = 0, progress=print) -> int:
    """Write a random-weight minimoe checkpoint of `cfg` into `folder`, streaming; its bytes."""
    from minimoe.io.atomic import atomic_files
    from minimoe.io.checkpoint import QUANT_KEY
    from minimoe.io.safetensors_file import write_streaming
    from minimoe.params import param_shapes
    from minimoe.quant.qtensor import format_module, packed_shape
    rng = np.random.default_rng(seed)
    specs, packed, total = {}, {}, 0
    for name, shape in param_shapes(cfg).items():
        fmt = storage_format(cfg, name, shape, storage)
        if fmt == "bf16":
            specs[name] = ("BF16", shape, lambda name=name, shape=shape: _bf16_pieces(name, shape, rng))
            total += 2 * int(np.prod(shape, dtype=np.int64))
        else:
            pshape = packed_shape(tuple(shape), format_module(fmt))
            specs[name] = ("U8", pshape, lambda fmt=fmt, shape=shape: _packed_pieces(fmt, shape, rng))
            packed[name] = {"fmt": fmt, "shape": list(shape)}
            total += int(np.prod(pshape, dtype=np.int64))
    metadata = {"format": "minimoe", QUANT_KEY: json.dumps(packed)} if packed else {"format": "minimoe"}
    progress(f"writing {total / GB:.1f} GB of random weights to {folder} ...")
    t0 = time.perf_counter()
    with atomic_files(folder) as stage:
        stage.write("model.safetensors", lambda path: write_streaming(path, specs, metadata))
        stage.write_text("config.json", cfg.to_json() + "\n")
    progress(f"written in {time.perf_counter() - t0:.0f} s")
    return total


def existing_checkpoint(cfg, storage: dict, folder: str) -> bool:
    """A complete checkpoint of this config and storage is already in `folder` (its header checks
    out against the file's size, and every tensor has the storage this run would write)."""
    from minimoe.io.safetensors_file import read_header
    from minimoe.params import param_shapes
    path = os.path.join(folder, "model.safetensors")
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            same = json.load(f) == json.loads(cfg.to_json())
        header = read_header(path)[0] if same else None
    except (OSError, ValueError, MinimoeError):
        return False
    if header is None or set(header) != set(param_shapes(cfg)):
        return False
    return all((header[n]["dtype"] == "BF16") == (storage_format(cfg, n, s, storage) == "bf16")
               for n, s in param_shapes(cfg).items())


# --- 2. the child process: load, run, measure -----------------------------------------------------

def _status(field: str) -> int | None:
    """A size field of /proc/self/status in bytes ("VmRSS", "VmHWM"), or None where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """This process's resident set now (VmRSS), or 0 where /proc is missing."""
    return _status("VmRSS") or 0


def peak_rss_bytes() -> int:
    """This process's peak resident set so far: VmHWM on Linux. (Not getrusage's ru_maxrss, which
    Linux carries across exec: a child started by a big process reports the parent's peak.)"""
    peak = _status("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def held_bytes(model) -> int:
    """Bytes of the arrays the model holds (packed ones as packed, mapped ones included)."""
    return sum(int(getattr(v, "blocks", v).nbytes) for v in model.params.values())


def expert_pages(model) -> dict:
    """{layer: [resident fraction of each expert's gate, up and down bytes]}: which experts the
    tokens so far have brought into memory."""
    from minimoe.io.pages import resident_bytes
    out = {}
    for i in range(model.config.n_layers):
        p = f"layers.{i}.moe.experts."
        if p + "gate" not in model.params:
            continue
        fractions = []
        for e in range(model.config.n_experts):
            parts = [model.params[p + w][e] for w in ("gate", "up", "down")]
            arrays = [getattr(a, "blocks", a) for a in parts]
            fractions.append(sum(resident_bytes(a) or 0 for a in arrays) / sum(a.nbytes for a in arrays))
        out[i] = fractions
    return out


def measure(folder: str, recipe: str | None, tokens: int, check_finite: bool = True) -> dict:
    """Load `folder` memory-mapped, run token 0 alone, then decode `tokens` more; what it cost."""
    import minimoe
    from minimoe.io.pages import is_mapped, resident_bytes
    r = {"rss_start": rss_bytes()}
    t0 = time.perf_counter()
    model = minimoe.load(folder, recipe=recipe, check_finite=check_finite)
    r.update(load_s=time.perf_counter() - t0, rss_after_load=rss_bytes(), peak_rss_load=peak_rss_bytes(),
             held_bytes=held_bytes(model))
    arrays = {n: getattr(v, "blocks", v) for n, v in model.params.items()}
    arrays = {n: a for n, a in arrays.items() if is_mapped(a)}          # (widened vectors are not)
    r["resident_after_load"] = sum(resident_bytes(a) or 0 for a in arrays.values())
    kv = model.new_kv_cache(1, tokens + 2)
    token = np.array([[1]])
    with minimoe.trace() as first:                                   # position 0, one token
        t0 = time.perf_counter()
        logits, _ = model.forward(token, kv)
        r["first_token_s"] = time.perf_counter() - t0
    r["first_token_traced_weight_bytes"] = first.totals()["weight_bytes"]
    resident = {n: resident_bytes(a) or 0 for n, a in arrays.items()}
    r["resident_after_first_token"] = sum(resident.values())
    by_component: dict = {}
    from minimoe.params import component
    for n, b in resident.items():
        by_component[component(n)] = by_component.get(component(n), 0) + b
    r["resident_after_first_token_by_component"] = by_component
    experts = expert_pages(model) if any(".experts." in n for n in arrays) else {}   # mapped experts only
    r["experts_paged_in_per_layer"] = [sum(f >= 0.99 for f in fr) for fr in experts.values()]
    r["experts_partly_paged_per_layer"] = [sum(0.01 < f < 0.99 for f in fr) for fr in experts.values()]
    times = []
    traced = None
    for step in range(tokens):
        token = np.array([[int(np.argmax(logits[0, -1]))]])
        if step == 1:                                                # one traced decode step
            with minimoe.trace() as traced:
                t0 = time.perf_counter()
                logits, _ = model.forward(token, kv)
                times.append(time.perf_counter() - t0)
            continue
        t0 = time.perf_counter()
        logits, _ = model.forward(token, kv)
        times.append(time.perf_counter() - t0)
    untraced = [t for i, t in enumerate(times) if i != 1] or times
    r.update(decode_s=times, tok_per_s=len(untraced) / sum(untraced),
             tok_per_s_median=1 / float(np.median(untraced)),
             traced_bytes_per_token=traced.totals()["weight_bytes"] + traced.totals()["kv_cache_bytes"]
             if traced is not None else None,
             traced_weight_bytes_per_token=traced.totals()["weight_bytes"] if traced is not None else None,
             peak_rss=peak_rss_bytes(), rss_end=rss_bytes(),
             resident_end=sum(resident_bytes(a) or 0 for a in arrays.values()))
    from minimoe.kernels.packed import repack_report
    r["repack"] = repack_report()                   # the kernels' copies of weights held in memory
    return r


def _child(folder: str, recipe: str | None, tokens: int, check_finite: bool) -> dict:
    """measure() in a fresh Python, its result as JSON on the last line of stdout."""
    code = ("import json, sys; from minimoe.bench.big import measure; "
            f"print(json.dumps(measure({folder!r}, {recipe!r}, {tokens}, {check_finite})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise MinimoeError(f"bench big: the measuring process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- 3. the estimator, and the whole run ----------------------------------------------------------

def held_rules(storage: dict, recipe: str | None) -> dict:
    """The estimator recipe for how the loaded model holds each tensor: the storage's packed
    formats, the load recipe's formats for the rest, bf16 for what neither names, and float32 for
    the vectors and the router (the loader widens those: minimoe/io/mapped.py)."""
    from minimoe.quant.model import get_recipe
    formats = dict(get_recipe(recipe).formats) if recipe else {}
    return {**formats, **storage, "router": "fp32", "default": "bf16", "vectors": "fp32"}


def total_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def run(preset: str, folder: str | None = None, recipe: str | None = "preset", tokens: int = 8,
        config=None, check_finite: bool = True, progress=print) -> dict:
    """The whole benchmark; `config` replaces the preset's (the tutorial's scaled-down model)."""
    import minimoe
    from minimoe.bench.machine import machine_peaks, read_gbs_for
    from minimoe.config import Config
    if preset not in PRESETS:
        raise MinimoeError(f"bench big: --preset must be one of {', '.join(PRESETS)}, found {preset!r}")
    big = PRESETS[preset]
    recipe = big.recipe if recipe == "preset" else recipe
    cfg = config or Config.preset(preset)
    folder = folder or os.path.join("minimoe_out", "big", preset if config is None else cfg.name or "custom")
    if existing_checkpoint(cfg, big.storage, folder):
        progress(f"reusing the checkpoint in {folder}")
    else:
        write_checkpoint(cfg, big.storage, folder, progress=progress)
    stored = os.path.getsize(os.path.join(folder, "model.safetensors"))
    progress(f"loading it memory-mapped (recipe {recipe}) and decoding {tokens} tokens in a child process ...")
    m = _child(folder, recipe, tokens, check_finite)
    peaks = machine_peaks()
    bandwidth = read_gbs_for(peaks, m["held_bytes"])
    ram = total_memory_bytes()
    est = minimoe.estimate(cfg, recipe=held_rules(big.storage, recipe), context=tokens + 2,
                           memory_gb=ram / GB, bandwidth_gbs=bandwidth)
    return {"preset": preset, "note": describe(big, recipe), "folder": folder, "recipe": recipe, "stored_bytes": stored,
            "n_experts": cfg.n_experts, "top_k": cfg.top_k,
            "cpu": peaks.get("cpu"), "cores": peaks.get("cores"), "ram_bytes": ram,
            "read_gbs": bandwidth, "measured": m,
            "estimate": {"weight_bytes": est["weight_bytes"], "memory_bytes": est["memory_bytes"],
                         "bytes_per_token": est["bytes_per_token"],
                         "weight_bytes_per_token": est["weight_bytes_per_token"],
                         "tok_per_s_upper": est["hardware"][0]["decode_tokens_per_s_upper"],
                         "fits": est["hardware"][0]["fits"]}}


def format_report(r: dict) -> str:
    m, e = r["measured"], r["estimate"]
    gb = lambda n: f"{n / GB:.2f} GB"                                      # noqa: E731
    bound = 1.15 * m["held_bytes"] + 300 * 2**20
    rows = [
        ("held by the model (bytes)", gb(m["held_bytes"]), gb(e["weight_bytes"]) + " (weights)"),
        ("peak RSS, load + decode", gb(m["peak_rss"]), gb(e["memory_bytes"]) + " (weights + KV + 10%)"),
        ("bytes read per token", gb(m["traced_bytes_per_token"]) + " (traced)", gb(e["bytes_per_token"])),
        ("tokens/s (decode, median)", f"{m['tok_per_s_median']:.2f}", f"{e['tok_per_s_upper']:.2f} (bandwidth bound)"),
    ]
    w = max(len(a) for a, _, _ in rows)
    lines = [f"bench big: {r['preset']} ({r['note']}), recipe {r['recipe']}, {r['folder']} "
             f"({gb(r['stored_bytes'])} on disk)",
             f"{r['cpu']}, {r['cores']} cores, {r['ram_bytes'] / 2**30:.1f} GiB RAM, read bandwidth "
             f"{r['read_gbs']:.1f} GB/s (bench machine, for a working set of the model's size)",
             "", f"{'':<{w}}  {'measured':>24}  {'estimator':>30}"]
    lines += [f"{a:<{w}}  {b:>24}  {c:>30}" for a, b, c in rows]
    first = m["resident_after_first_token"]
    lines += ["",
              f"load {m['load_s']:.1f} s; peak RSS while loading {gb(m['peak_rss_load'])}, bound "
              f"1.15 x held + 300 MB = {gb(bound)}: {'within' if m['peak_rss_load'] <= bound else 'OVER'}; "
              f"after decoding: {'within' if m['peak_rss'] <= bound else 'OVER'}",
              f"pages of the mapped file in memory: {gb(m['resident_after_load'])} after loading, {gb(first)} after "
              f"the first token (it read {gb(m['first_token_traced_weight_bytes'])}, traced), "
              f"{gb(m['resident_end'])} after {len(m['decode_s']) + 1} tokens",
              "  after the first token, by component: " + ", ".join(
                  f"{c} {gb(b)}" for c, b in m["resident_after_first_token_by_component"].items() if b),
              (f"  experts paged in per MoE layer (the router picks {r['top_k']} of {r['n_experts']}): "
               f"{m['experts_paged_in_per_layer']}"
               + (f"; partly (the neighbours of routed ones: the kernel maps whole page-cache folios): "
                  f"{m['experts_partly_paged_per_layer']}" if any(m['experts_partly_paged_per_layer']) else "")
               if m["experts_paged_in_per_layer"] else
               "  the experts are in memory, not mapped (quantized while loading)"),
              repack_line(m.get("repack")),
              f"decode seconds per token: {', '.join(f'{t:.2f}' for t in m['decode_s'])} "
              f"(the second one traced; mean {m['tok_per_s']:.2f} tokens/s: a token whose experts "
              f"are not in the page cache waits for the disk)"]
    return "\n".join(lines)


def repack_line(rep: dict | None) -> str:
    """What the repack budget (minimoe/kernels/packed.py) let the kernels copy, and what it did not."""
    if not rep or rep["budget"] is None:
        return "  repack budget: not needed (no packed weight of 16 MB or more is held in memory)"
    gb = lambda n: f"{n / GB:.2f} GB"                                      # noqa: E731
    refused = rep["refused"]
    line = f"  repack budget {gb(rep['budget'])}: the kernels' copies of large weights take {gb(rep['used'])}"
    if not refused:
        return line + "; every weight was repacked"
    return (line + f"; {len(refused)} weights past it ({gb(sum(refused.values()))} of copies not made, "
            f"first {next(iter(refused))}) are read as stored, a slower decode")
