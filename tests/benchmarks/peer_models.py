#!/usr/bin/env python
"""One minimoe model, three runtimes: export a preset's random weights to the peers of issue 7.

Needs torch + transformers (for the Hugging Face copy) and llama-cpp-python (for the check of
the GGUF files); neither is a minimoe dependency, and CI does not run this. See
compare_decode_peers.py for the environment:

    /tmp/peers/bin/python tests/benchmarks/peer_models.py --check       # writes /tmp/minimoe_peers/*.gguf

Shape legend: C d_model, H heads, G kv heads, D head dim, F expert width, E experts, V vocab, T time.

What it builds from `minimoe.Model(Config.preset("mixtral-mini"), seed=0)`:

  * a Hugging Face `MixtralForCausalLM` in float32 (transformers v5 "fused" expert tensors; the
    inverse of minimoe/io/hf.py, which reads them):

        minimoe                              transformers v5
        embed.weight (V, C)                  model.embed_tokens.weight
        layers.{i}.attn_norm.weight (C,)     model.layers.{i}.input_layernorm.weight
        layers.{i}.attn.{q,k,v,o}.weight     model.layers.{i}.self_attn.{q,k,v,o}_proj.weight
        layers.{i}.ffn_norm.weight (C,)      model.layers.{i}.post_attention_layernorm.weight
        layers.{i}.moe.router.weight (E, C)  model.layers.{i}.mlp.gate.weight
        layers.{i}.moe.experts.gate (E,F,C)  model.layers.{i}.mlp.experts.gate_up_proj (E, 2F, C)[:, :F]
        layers.{i}.moe.experts.up (E, F, C)                                         ...[:, F:]
        layers.{i}.moe.experts.down (E,C,F)  model.layers.{i}.mlp.experts.down_proj
        norm.weight (C,)                     model.norm.weight
        head.weight (V, C)                   lm_head.weight

  * GGUF files for llama.cpp, architecture "llama" (the one llama.cpp runs Mixtral with):

        embed.weight                  token_embd.weight         (ggml shape [C, V] = numpy (V, C))
        layers.{i}.attn_norm.weight   blk.{i}.attn_norm.weight  F32
        layers.{i}.attn.q.weight      blk.{i}.attn_q.weight     rows interleaved for RoPE, see below
        layers.{i}.attn.k.weight      blk.{i}.attn_k.weight     rows interleaved for RoPE
        layers.{i}.attn.v.weight      blk.{i}.attn_v.weight
        layers.{i}.attn.o.weight      blk.{i}.attn_output.weight
        layers.{i}.ffn_norm.weight    blk.{i}.ffn_norm.weight   F32
        layers.{i}.moe.router.weight  blk.{i}.ffn_gate_inp.weight  F32 always (llama.cpp's own
                                                                    quantizer never packs it either)
        layers.{i}.moe.experts.gate   blk.{i}.ffn_gate_exps.weight (E, F, C)
        layers.{i}.moe.experts.up     blk.{i}.ffn_up_exps.weight   (E, F, C)
        layers.{i}.moe.experts.down   blk.{i}.ffn_down_exps.weight (E, C, F)
        norm.weight                   output_norm.weight        F32
        head.weight                   output.weight

    in three types: f32, q8_0 and q4_0. In q8_0 and q4_0 EVERY matrix above is packed, including
    token_embd and output ("all weights Q4_0", as issue 7's peer numbers were measured). minimoe's
    own recipes differ there: they keep the embedding float and the head q8_0. The packing is
    gguf.quants', which minimoe's q8_0/q4_0 encoders match byte for byte, so the attention and
    expert bytes llama.cpp reads are the ones minimoe's recipe of the same name reads.

RoPE layouts. minimoe and Hugging Face rotate dimension j of a head with dimension j + D/2
("rotate half"). llama.cpp's "llama" architecture rotates neighbours, 2j with 2j + 1. The same
model in llama.cpp therefore needs each head's q and k rows reordered so that HF row j lands on
row 2j and HF row j + D/2 on row 2j + 1. q and k are reordered alike, so q . k is unchanged;
v and o are not touched.

The GGUF has no tokenizer: `tokenizer.ggml.model` = "none" and `llama.vocab_size` = V, which
llama.cpp loads as V dummy tokens. Token ids go in, logits come out.

`--check` runs a 16-token prompt through every runtime and prints max |delta logit| against
minimoe fp32 (max |logit| is about 1.9). Measured with transformers 5.24.0, llama-cpp-python 0.3.36:
    HF fp32 (eager or sdpa + grouped_mm)        ~2e-6
    llama.cpp f32 with an F32 KV cache          ~2e-6
    llama.cpp f32 with its default F16 KV cache ~7e-4
    llama.cpp q8_0 / q4_0                       ~0.5 / ~0.8: quantized weights and activations,
                                                and near-ties in the random router (see
                                                routing_margin_note); only rough agreement
The same again on a copy with random RMSNorm weights, so that a norm exported under the wrong
name would show.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

PRESET = "mixtral-mini"
SEED = 0
GGUF_TYPES = ("f32", "q8_0", "q4_0")
DEFAULT_DIR = "/tmp/minimoe_peers"


# --- minimoe ----------------------------------------------------------------------------------------
def minimoe_model(preset: str = PRESET, seed: int = SEED):
    """The preset with minimoe's random weights: the one model every runtime here gets."""
    import minimoe
    model = minimoe.Model(minimoe.Config.preset(preset), seed=seed)
    check_mixtral_like(model.config)
    return model


def check_mixtral_like(cfg):
    """The exports below write a plain Mixtral; refuse, by name, a config field they can't express."""
    from minimoe.io.gguf_file import check_llama_moe
    check_llama_moe(cfg)


# --- Hugging Face -----------------------------------------------------------------------------------
def to_hf(model, attn: str = "eager", experts: str = "eager"):
    """minimoe Model -> float32 transformers MixtralForCausalLM (eval mode) with the same weights.

    attn: "eager" or "sdpa"; experts: "eager" (a Python loop over the experts hit) or another
    transformers experts implementation such as "grouped_mm" (a fresh model's default).
    """
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM
    cfg, p = model.config, model.params
    hf_cfg = MixtralConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_expert,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
        num_local_experts=cfg.n_experts, num_experts_per_tok=cfg.top_k,
        max_position_embeddings=cfg.max_seq_len, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=False, attn_implementation=attn, experts_implementation=experts,
        torch_dtype="float32")
    torch.manual_seed(0)                               # its random init is overwritten below
    hf = MixtralForCausalLM(hf_cfg)
    state = {"model.embed_tokens.weight": p["embed.weight"],
             "model.norm.weight": p["norm.weight"],
             "lm_head.weight": p["head.weight"]}
    for i in range(cfg.n_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        state[theirs + "input_layernorm.weight"] = p[ours + "attn_norm.weight"]
        state[theirs + "post_attention_layernorm.weight"] = p[ours + "ffn_norm.weight"]
        for n in "qkvo":
            state[theirs + f"self_attn.{n}_proj.weight"] = p[ours + f"attn.{n}.weight"]
        state[theirs + "mlp.gate.weight"] = p[ours + "moe.router.weight"]                 # (E, C)
        state[theirs + "mlp.experts.gate_up_proj"] = np.concatenate(
            [p[ours + "moe.experts.gate"], p[ours + "moe.experts.up"]], axis=1)          # 2 x (E,F,C) -> (E,2F,C)
        state[theirs + "mlp.experts.down_proj"] = p[ours + "moe.experts.down"]            # (E, C, F)
    state = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"HF Mixtral state dict mismatch: missing {missing}, unexpected {unexpected}")
    return hf.float().eval()


# --- GGUF -------------------------------------------------------------------------------------------
def write_gguf(model, path: str, wtype: str = "f32") -> str:
    """Write `model` as a llama.cpp "llama"-architecture GGUF with its matrices in `wtype`: the
    library's export (minimoe/io/gguf_file.py: q/k rows permuted for llama.cpp's RoPE,
    tokenizer.ggml.model "none"), with token_embd packed too, as issue 7's numbers were measured."""
    from minimoe.io.gguf_file import save_gguf
    return save_gguf(model, path, recipe=wtype, pack_embedding=True)


def gguf_paths(model, folder: str = DEFAULT_DIR, types=GGUF_TYPES, seed: int = SEED, log=print) -> dict:
    """{type: path}, writing each file that is not there yet (named by preset, seed and type)."""
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for t in types:
        path = os.path.join(folder, f"{model.config.name}-seed{seed}-{t}.gguf")
        if not os.path.exists(path):
            t0 = time.perf_counter()
            write_gguf(model, path, t)                  # atomic: written under a temporary name
            log(f"wrote {path} ({os.path.getsize(path) / 2**20:.0f} MiB, {time.perf_counter() - t0:.1f} s)")
        paths[t] = path
    return paths


def load_llama(path: str, n_threads: int = 2, n_ctx: int = 512, n_batch: int = 512, logits_all: bool = False,
               kv_f32: bool = False):
    """A llama_cpp.Llama on `path`, CPU only, the whole prompt in one batch.

    llama.cpp keeps its KV cache in F16 unless `kv_f32`; that alone moves the logits by ~1e-3.
    """
    import llama_cpp
    kv = dict(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32) if kv_f32 else {}
    return llama_cpp.Llama(model_path=path, n_threads=n_threads, n_threads_batch=n_threads, n_ctx=n_ctx,
                           n_batch=n_batch, n_ubatch=n_batch, logits_all=logits_all, n_gpu_layers=0,
                           seed=SEED, verbose=False, **kv)


def llama_last_logits(llm) -> np.ndarray:
    """The logits (V,) of the last token of the last `llm.eval`."""
    import llama_cpp
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


# --- the check --------------------------------------------------------------------------------------
def with_random_norms(model, seed: int = 1):
    """A copy of `model` whose RMSNorm weights are U(0.5, 1.5), not 1: then a norm exported under
    the wrong name changes the logits, and the check below sees it."""
    import minimoe
    rng = np.random.default_rng(seed)
    params = {k: (rng.uniform(0.5, 1.5, v.shape).astype(np.float32) if k.endswith("norm.weight") else v)
              for k, v in model.params.items()}
    return minimoe.Model(model.config, params=params)


def routing_margin_note(routing: list[dict], k: int) -> str:
    """Where the fp32 router comes closest to a tie between its k-th and (k+1)-th expert.

    Random weights make the router nearly uniform. Quantized weights and llama.cpp's 8-bit
    activations move a near-tie's probabilities enough to pick another expert; that token's hidden
    state then changes, and every later position attends to it. So a quantized runtime can differ
    by a large |delta logit| at every position after the first flip, while position 0 stays close.
    """
    gaps = []
    for layer, r in enumerate(routing):
        top = np.sort(r["probs"], axis=-1)[:, ::-1]                 # (T, E), descending
        gap = top[:, k - 1] - top[:, k]                             # (T,)
        gaps.append((float(gap.min()), layer, int(gap.argmin())))
    gap, layer, pos = min(gaps)
    return (f"  (smallest fp32 router gap between expert {k} and {k + 1}: {gap:.4f}, layer {layer}, "
            f"position {pos}; quantized runtimes may route that token differently, and the positions "
            f"after it then differ too)")


def check(folder: str = DEFAULT_DIR, n_tokens: int = 16, skip=()) -> dict:
    """Logits of the same prompt in every runtime against minimoe's: max |delta logit| of each."""
    import minimoe
    model = minimoe_model()
    tokens = np.random.default_rng(SEED).integers(0, model.config.vocab_size, n_tokens)   # (T,)
    report = {}

    def show(name, logits, ref, tol=None):
        d = float(np.abs(logits - ref).max())
        same = int((logits.argmax(-1) == ref.argmax(-1)).sum())
        d0 = float(np.abs(logits[0] - ref[0]).max())               # position 0: no attention mixing
        verdict = (f"  (position 0: {d0:.3e})" if tol is None
                   else "  OK" if d <= tol else f"  NOT OK (tolerance {tol:g})")
        print(f"  {name:<40} max|dlogit| {d:.3e}   argmax equal at {same}/{len(ref)}{verdict}")
        report[name] = {"max_abs_dlogit": d, "max_abs_dlogit_position0": d0, "argmax_equal": same,
                        "ok": tol is None or d <= tol}

    def llama_logits(path, kv_f32=False):
        llm = load_llama(path, n_ctx=64, n_batch=64, logits_all=True, kv_f32=kv_f32)
        llm.eval(tokens.tolist())
        logits = np.array(llm.scores[:n_tokens], dtype=np.float32)                        # (T, V)
        del llm
        return logits

    for label, m in (("", model), (" (norms U(0.5,1.5))", with_random_norms(model))):
        ref, cache = m.forward(tokens)                                                     # (T, V)
        print(f"minimoe {m.config.name}{label} fp32, {n_tokens} tokens: max |logit| {np.abs(ref).max():.4f}")
        if m is model:
            print(routing_margin_note(cache["routing"], m.config.top_k))
        if "hf" not in skip:
            import torch
            for attn, experts in (("eager", "eager"), ("sdpa", "grouped_mm")):
                hf = to_hf(m, attn, experts)
                with torch.inference_mode():
                    logits = hf(torch.from_numpy(tokens[None])).logits[0].numpy()
                show(f"HF fp32 ({attn}, {experts}) vs fp32", logits, ref, tol=1e-4)
                del hf
        if "llamacpp" in skip:
            continue
        if m is model:
            ours = {t: minimoe.quantize(model, t)(tokens) for t in ("q8_0", "q4_0")}
            for t, path in gguf_paths(model, folder).items():
                if t == "f32":
                    show("llama.cpp f32, F32 KV cache vs fp32", llama_logits(path, kv_f32=True), ref, tol=1e-4)
                logits = llama_logits(path)
                show(f"llama.cpp {t} vs fp32", logits, ref, tol=1e-3 if t == "f32" else None)
                if t in ours:
                    show(f"llama.cpp {t} vs minimoe {t}", logits, ours[t])
            for t, logits in ours.items():
                show(f"minimoe {t} vs fp32", logits, ref)
        else:
            import tempfile
            with tempfile.TemporaryDirectory() as tmp:
                path = write_gguf(m, os.path.join(tmp, "norms.gguf"), "f32")
                show("llama.cpp f32, F32 KV cache vs fp32", llama_logits(path, kv_f32=True), ref, tol=1e-4)
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_DIR, help=f"folder for the GGUF files (default {DEFAULT_DIR})")
    ap.add_argument("--check", action="store_true", help="compare every runtime's logits with minimoe's")
    ap.add_argument("--skip", action="append", default=[], choices=["hf", "llamacpp"])
    args = ap.parse_args(argv)
    if args.check:
        report = check(args.out, skip=args.skip)
        return 0 if all(r["ok"] for r in report.values()) else 1
    else:
        gguf_paths(minimoe_model(), args.out)


if __name__ == "__main__":
    sys.exit(main())
