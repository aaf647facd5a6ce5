"""GGUF files (llama.cpp's format) out of and into minimoe, through the `gguf` package (an optional
extra: pip install gguf).

Shape legend: V vocab, C model width, H heads, G kv heads, D head dim, F expert width, E experts.

    model.save_gguf("m.gguf", recipe="q4_0")     # f32 | q8_0 | q4_0 | mxfp4
    model = minimoe.load("m.gguf")              # packed tensors stay packed (QTensor)

Architectures written (arch_for picks one from the config's q/k norm; docs/export.md):
    llama      Mixtral: what convert_hf_to_gguf.py writes for one (llama with experts)
    qwen3moe   Qwen3-MoE: q/k RMSNorm per head, top-k renormalised
    olmoe      OLMoE: q/k RMSNorm over the whole projection, top-k not renormalised
    gpt-oss    gpt-oss (llama.cpp's LLM_ARCH_OPENAI_MOE, src/models/openai-moe-iswa.cpp): biases on
               q, k, v, o, the router and the experts, one attention sink per head, a sliding
               window on the even layers, the clamped SwiGLU (limit 7, alpha 1.702, which
               llama.cpp hard-codes), top-k then softmax over the k, YaRN
Metadata keys are {arch}.block_count, {arch}.expert_count, {arch}.expert_used_count, ... (and
{arch}.expert_feed_forward_length, gpt-oss's attention.sliding_window and rope.scaling.*); tensors
token_embd, blk.N.attn_{norm,q,k,v,output} (+ .bias), blk.N.attn_{q,k}_norm, blk.N.attn_sinks,
blk.N.ffn_norm (gpt-oss: blk.N.post_attention_norm), blk.N.ffn_gate_inp (router, + .bias),
blk.N.ffn_{gate,up,down}_exps (E stacked, + .bias), output_norm, output. DeepSeek ("deepseek2")
is NOT written.

Two conventions differ from minimoe's (and Hugging Face's):
  * RoPE: llama.cpp's "llama" architecture rotates neighbouring pairs (x0, x1), (x2, x3), ...;
    minimoe rotates halves (x_j, x_{j + D/2}). convert_hf_to_gguf.py permutes the rows of q and
    k to make one the other; rope_interleave_rows does the same, and load undoes it. A row
    permutation moves whole rows of packed blocks, so it is exact for packed tensors too.
    qwen3moe and olmoe rotate halves in llama.cpp too ("NEOX" RoPE): nothing is permuted.
  * Which tensors are packed: the recipe packs the attention and expert matrices and the output
    head; norms, the router and the embedding table stay float32 (minimoe looks embedding rows
    up in float), as llama.cpp keeps norms and the router.
The packed bytes are minimoe.quant's, which are gguf.quants' byte for byte.
"""
from __future__ import annotations

import json
import os

import numpy as np

from minimoe.errors import MinimoeError

RECIPES = ("f32", "q8_0", "q4_0", "mxfp4", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k")   # K-quants: rows a multiple of 256


class GGUFError(MinimoeError, ValueError):
    """A model that cannot be written as GGUF, or a GGUF file minimoe cannot read."""


def _gguf():
    try:
        import gguf
    except ImportError:
        raise GGUFError("GGUF files need the `gguf` package: pip install gguf") from None
    return gguf


# llama.cpp architecture -> what its graph computes that a minimoe config must match.
# (src/models/*.cpp in llama.cpp: the "llama" graph with experts is Mixtral's; qwen3moe always
# renormalises the top-k weights and RMS-normalises q and k per head; olmoe never renormalises and
# normalises q and k over the whole projection, which it sizes n_embd, so it has no GQA.)
ARCHS = {
    "llama": dict(qk_norm="none", router_renorm=True, dense_layers=[], tie_embeddings=False),
    "qwen3moe": dict(qk_norm="head", router_renorm=True, dense_layers=[]),
    "olmoe": dict(qk_norm="full", router_renorm=False, dense_layers=[], tie_embeddings=False),
    # openai-moe-iswa.cpp; the window and YaRN are checked in arch_for
    "gpt-oss": dict(qk_norm="none", dense_layers=[], tie_embeddings=False, router="topk_softmax",
                    router_bias=True, expert_bias=True, qkv_bias=True, o_bias=True, attn_sinks=True,
                    ffn_act="swiglu_oai", swiglu_limit=7.0, swiglu_alpha=1.702, sliding_window=...,
                    rope_scaling=...),
}
PLAIN = dict(router="softmax_topk", router_bias=False, router_scale=1.0, expert_bias=False,
             attention="gqa", qkv_bias=False, o_bias=False, attn_sinks=False, sliding_window=0,
             ffn_act="swiglu", n_shared_experts=0, rope_scaling=None, norm="rmsnorm",
             attn_output_gate=False, router_correction_bias=False, router_groups=1,
             eval_capacity_factor=0.0)


def arch_for(cfg) -> str:
    """The llama.cpp architecture that computes exactly what `cfg` says, chosen by its q/k norm
    (none -> llama, per head -> qwen3moe, whole projection -> olmoe); a GGUFError names the first
    field that architecture cannot express."""
    if cfg.n_experts < 2:
        raise GGUFError(f"config {cfg.name!r} has no experts (n_experts={cfg.n_experts}); the GGUF export "
                        f"writes MoE models")
    arch = {"none": "llama", "head": "qwen3moe", "full": "olmoe"}.get(cfg.qk_norm)
    if cfg.attn_sinks or cfg.ffn_act == "swiglu_oai":
        arch = "gpt-oss"
    if arch is None:
        raise GGUFError(f"config {cfg.name!r}: qk_norm={cfg.qk_norm!r} has no llama.cpp architecture")
    for key, want in {**PLAIN, **ARCHS[arch]}.items():
        if want is not ... and getattr(cfg, key, want) != want:
            raise GGUFError(f"config {cfg.name!r}: {key}={getattr(cfg, key)!r}; the GGUF '{arch}' export "
                            f"needs {key}={want!r} (docs/export.md)")
    if arch == "olmoe" and (cfg.n_kv_heads != cfg.n_heads or cfg.head_dim * cfg.n_heads != cfg.d_model):
        raise GGUFError(f"config {cfg.name!r}: llama.cpp's olmoe sizes q_norm and k_norm by d_model, so it "
                        f"needs n_kv_heads == n_heads and head_dim * n_heads == d_model")
    if arch == "gpt-oss":
        check_gpt_oss(cfg)
    return arch


def check_gpt_oss(cfg) -> None:
    """llama.cpp's gpt-oss: a sliding window on exactly the even layers (its swa pattern 2), and
    RoPE plain or YaRN with the default attention factor 1 + 0.1 ln(factor)."""
    even = [i for i in range(cfg.n_layers) if i % 2 == 0]
    if not cfg.sliding_window or [i for i in range(cfg.n_layers) if cfg.window(i)] != even:
        raise GGUFError(f"config {cfg.name!r}: sliding_window={cfg.sliding_window}, sliding_layers="
                        f"{cfg.sliding_layers}; llama.cpp's gpt-oss slides a window over the even layers "
                        f"{even} and no other")
    rs = cfg.rope_scaling
    if rs is not None:
        kind = rs.get("type", rs.get("rope_type"))
        extra = sorted(k for k in ("attention_factor", "mscale", "mscale_all_dim") if rs.get(k) is not None)
        if kind != "yarn" or extra:
            raise GGUFError(f"config {cfg.name!r}: rope_scaling={rs!r}; the GGUF gpt-oss export writes "
                            f"YaRN with its default attention factor (no {', '.join(extra) or kind})")


def check_llama_moe(cfg) -> None:
    """Refuse, by name, a config field that llama.cpp's "llama" (Mixtral) architecture can't express."""
    if arch_for(cfg) != "llama":
        raise GGUFError(f"config {cfg.name!r}: qk_norm={cfg.qk_norm!r}; the 'llama' export has no q/k norm")


def rope_interleave_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """q or k rows (H*D, ...), rotate-half order -> llama.cpp's neighbour-pair order: in each
    head, row j (j < D/2) moves to 2j and row j + D/2 to 2j + 1."""
    rows = w.shape[0]
    D = rows // n_heads
    halves = w.reshape(n_heads, 2, D // 2, *w.shape[1:])         # (H, 2, D/2, ...)
    pairs = np.swapaxes(halves, 1, 2)                            # (H, D/2, 2, ...)
    return np.ascontiguousarray(pairs.reshape(w.shape))


def rope_halves_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of rope_interleave_rows."""
    rows = w.shape[0]
    D = rows // n_heads
    pairs = w.reshape(n_heads, D // 2, 2, *w.shape[1:])          # (H, D/2, 2, ...)
    return np.ascontiguousarray(np.swapaxes(pairs, 1, 2).reshape(w.shape))


def _permute(t, n_heads, fn):
    """Row permutation of a float array or of a QTensor's packed rows (whole rows of blocks)."""
    if isinstance(t, np.ndarray):
        return fn(t, n_heads)
    from minimoe.quant import QTensor
    return QTensor(t.fmt, t.shape, fn(t.blocks, n_heads), t.name)


def tensor_names(cfg) -> list[tuple[str, str, bool]]:
    """(GGUF name, minimoe param name, packed by a recipe) for a MoE of one of ARCHS; biases and
    sinks where the config has them (gpt-oss)."""
    out = [("token_embd.weight", "embed.weight", False)]
    for i in range(cfg.n_layers):
        ours, blk = f"layers.{i}.", f"blk.{i}."
        out += [(blk + "attn_norm.weight", ours + "attn_norm.weight", False),
                (blk + "attn_q.weight", ours + "attn.q.weight", True),
                (blk + "attn_k.weight", ours + "attn.k.weight", True),
                (blk + "attn_v.weight", ours + "attn.v.weight", True),
                *([(blk + f"attn_{x}.bias", ours + f"attn.{x}.bias", False) for x in "qkv"]
                  if cfg.qkv_bias else []),
                (blk + "attn_output.weight", ours + "attn.o.weight", True),
                *([(blk + "attn_output.bias", ours + "attn.o.bias", False)] if cfg.o_bias else []),
                *([(blk + "attn_q_norm.weight", ours + "attn.q_norm.weight", False),
                   (blk + "attn_k_norm.weight", ours + "attn.k_norm.weight", False)]
                  if cfg.qk_norm != "none" else []),
                *([(blk + "attn_sinks.weight", ours + "attn.sinks", False)] if cfg.attn_sinks else []),
                # gpt-oss's checkpoint calls the norm before the MoE post_attention_layernorm
                (blk + ("post_attention_norm.weight" if cfg.attn_sinks else "ffn_norm.weight"),
                 ours + "ffn_norm.weight", False),
                (blk + "ffn_gate_inp.weight", ours + "moe.router.weight", False),
                *([(blk + "ffn_gate_inp.bias", ours + "moe.router.bias", False)] if cfg.router_bias else []),
                (blk + "ffn_gate_exps.weight", ours + "moe.experts.gate", True),
                (blk + "ffn_up_exps.weight", ours + "moe.experts.up", True),
                (blk + "ffn_down_exps.weight", ours + "moe.experts.down", True),
                *([(blk + f"ffn_{x}_exps.bias", ours + f"moe.experts.{x}_bias", False)
                   for x in ("gate", "up", "down")] if cfg.expert_bias else [])]
    out += [("output_norm.weight", "norm.weight", False)]
    if not cfg.tie_embeddings:                   # tied (qwen3moe may be): llama.cpp reuses token_embd
        out += [("output.weight", "head.weight", True)]
    return out


def _file_type(gguf, recipe):
    return {"f32": gguf.LlamaFileType.ALL_F32, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
            "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
            "mxfp4": getattr(gguf.LlamaFileType, "MOSTLY_MXFP4_MOE", gguf.LlamaFileType.ALL_F32),
            "q2_k": gguf.LlamaFileType.MOSTLY_Q2_K, "q3_k": gguf.LlamaFileType.MOSTLY_Q3_K_S, "q4_k": gguf.LlamaFileType.MOSTLY_Q4_K_S, "q5_k": gguf.LlamaFileType.MOSTLY_Q5_K_S,
            "q6_k": gguf.LlamaFileType.MOSTLY_Q6_K}[recipe]


def save_gguf(model, path: str, recipe: str = "f32", pack_embedding: bool = False) -> str:
    """Write `model` as a llama.cpp GGUF of the architecture arch_for picks; `recipe` packs the
    matrices (f32 = none).
    A matrix already packed in the model is written as it is, whatever the recipe.
    pack_embedding: pack token_embd too (llama.cpp's "all weights" files; minimoe dequantizes it
    when it loads the file, so the round trip is then exact only up to that quantization)."""
    gguf = _gguf()
    from minimoe import quant
    from minimoe.io.atomic import atomic_path
    if recipe not in RECIPES:
        raise GGUFError(f"--recipe must be one of {', '.join(RECIPES)}, found {recipe!r}")
    cfg, p = model.config, model.params
    arch = arch_for(cfg)
    path = os.fspath(path)
    with atomic_path(path) as tmp:
        w = _writer(gguf, tmp, arch)
        w.add_name(f"minimoe {cfg.name}")
        w.add_file_type(_file_type(gguf, recipe))
        w.add_vocab_size(cfg.vocab_size)
        w.add_context_length(cfg.max_seq_len)
        w.add_embedding_length(cfg.d_model)
        w.add_block_count(cfg.n_layers)
        w.add_feed_forward_length(cfg.d_ff if arch in ("qwen3moe", "gpt-oss") else cfg.d_expert)
        if arch in ("qwen3moe", "gpt-oss"):
            w.add_expert_feed_forward_length(cfg.d_expert)
        elif cfg.d_ff != cfg.d_expert:            # llama/olmoe have one width (the experts'); keep the
            w.add_uint32(D_FF_KEY, cfg.d_ff)      # unused dense width too, for an exact round trip
        if arch == "gpt-oss":
            add_gpt_oss_keys(gguf, w, cfg)
        w.add_head_count(cfg.n_heads)
        w.add_head_count_kv(cfg.n_kv_heads)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_expert_count(cfg.n_experts)
        w.add_expert_used_count(cfg.top_k)
        add_vocabulary(w, model.tokenizer, cfg.vocab_size)
        for gname, ours, packable in tensor_names(cfg):
            t = p[ours]
            if arch == "llama" and gname.endswith(("attn_q.weight", "attn_k.weight")):   # NEOX archs: as is
                heads = cfg.n_heads if "attn_q" in gname else cfg.n_kv_heads
                t = _permute(t, heads, rope_interleave_rows)
            if isinstance(t, np.ndarray) and (packable or pack_embedding and ours == "embed.weight") \
                    and recipe != "f32":
                t = quant.quantize(t, recipe, name=gname)
            if isinstance(t, np.ndarray):
                w.add_tensor(gname, np.ascontiguousarray(t, dtype=np.float32))
            else:
                qtype = getattr(gguf.GGMLQuantizationType, GGUF_TYPE_NAMES.get(t.fmt, t.fmt.upper()), None)
                if qtype is None:
                    raise GGUFError(f"{ours}: packed as {t.fmt}, which GGUF has no type for; "
                                    f"quantize the model with a GGUF format (q8_0, q4_0, q4_1, mxfp4, "
                                    f"q2_k, q3_k, q4_k, q5_k, q6_k) or keep it float")
                w.add_tensor(gname, t.blocks, raw_dtype=qtype)       # (..., bytes per row) uint8
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path


GGUF_TYPE_NAMES = {"fp16": "F16", "bf16": "BF16"}   # minimoe's storage formats whose GGUF names differ
D_FF_KEY = "minimoe.feed_forward_length"   # the dense FFN width, where the architecture has no key for it
TRUNCATE_KEY = "minimoe.rope.scaling.truncate"   # YaRN's correction range floored/ceiled or not


def add_gpt_oss_keys(gguf, w, cfg) -> None:
    """The window and YaRN keys of llama.cpp's gpt-oss, as convert_hf_to_gguf.py writes them.
    llama.cpp 0.3.36 always floors and ceils YaRN's correction range (ggml_rope_yarn_corr_dims),
    as rope_scaling.truncate=true does; a config with truncate=false (gpt-oss's own) is written
    all the same, with TRUNCATE_KEY so that minimoe reads it back exactly (docs/export.md)."""
    w.add_sliding_window(cfg.sliding_window)
    rs = cfg.rope_scaling
    if rs is None:
        return
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(float(rs["factor"]))
    w.add_rope_scaling_orig_ctx_len(int(rs["original_max_position_embeddings"]))
    w.add_rope_scaling_yarn_beta_fast(float(rs.get("beta_fast", 32.0)))
    w.add_rope_scaling_yarn_beta_slow(float(rs.get("beta_slow", 1.0)))
    w.add_bool(TRUNCATE_KEY, bool(rs.get("truncate", True)))
    if not rs.get("truncate", True):
        import warnings
        warnings.warn(f"config {cfg.name!r}: rope_scaling.truncate is false; llama.cpp floors and ceils "
                      f"YaRN's correction range all the same, so it will compute other logits than minimoe "
                      f"(docs/export.md, 'gpt-oss and YaRN's truncate')", RuntimeWarning, stacklevel=4)


def f32_value(x) -> float:
    """A float32 metadata value as the decimal it was written from: 1e-05, not 9.999999747e-06
    (the shortest decimal that rounds to that float32)."""
    return float(str(np.float32(x)))


def gpt_oss_fields(field, a: str, n_layers: int) -> dict:
    """The Config fields of a gpt-oss GGUF that its metadata does not name one by one."""
    window = int(field(a + "attention.sliding_window"))
    out = dict(router="topk_softmax", router_bias=True, expert_bias=True, qkv_bias=True, o_bias=True,
               attn_sinks=True, ffn_act="swiglu_oai", sliding_window=window,
               sliding_layers=[i for i in range(n_layers) if i % 2 == 0])
    if field(a + "rope.scaling.type", required=False) == "yarn":
        truncate = field(TRUNCATE_KEY, required=False)
        out["rope_scaling"] = {"type": "yarn", "factor": f32_value(field(a + "rope.scaling.factor")),
                               "beta_fast": f32_value(field(a + "rope.scaling.yarn_beta_fast", required=False) or 32.0),
                               "beta_slow": f32_value(field(a + "rope.scaling.yarn_beta_slow", required=False) or 1.0),
                               "truncate": True if truncate is None else bool(truncate),
                               "original_max_position_embeddings": int(field(a + "rope.scaling.original_context_length"))}
    return out


# --------------------------------------------------------------------------------------------------
# The tokenizer as a GGUF vocabulary (llama.cpp's tokenizer.ggml.* keys)
# --------------------------------------------------------------------------------------------------

TOKENIZER_KEY = "minimoe.tokenizer"      # minimoe's own tokenizer JSON, for an exact round trip


def gguf_vocabulary(tok, vocab_size: int):
    """A tokenizer -> (tokens, token types, merges) for llama.cpp's "gpt2" (byte-level BPE) model,
    exactly vocab_size long (the rows of token_embd), or None when it cannot be expressed.

    Every minimoe tokenizer is first written as a Hugging Face BPE (io/hf_export.tokenizer_json):
    the byte tokenizer is a byte-level BPE with no merges (id b = byte b), the character tokenizer
    a BPE over its characters. llama.cpp's gpt2 model works on bytes shown as printable characters
    (GPT-2's bytes_to_unicode), so token strings that are not byte-level already are converted.
    Ids past the tokenizer's vocabulary are filled with unused "[PAD{i}]" tokens; special tokens
    past the model's vocabulary are dropped.
    """
    import gguf
    from minimoe.hf_tokenizer.bpe import bytes_to_chars
    from minimoe.io.hf_export import tokenizer_json
    spec = tokenizer_json(tok)
    if spec is None or spec.get("model", {}).get("type") != "BPE" or spec["model"].get("byte_fallback"):
        return None                       # SentencePiece-style (Mixtral, Llama 2): not a gpt2 vocabulary
    pre = spec.get("pre_tokenizer") or {}
    pres = pre.get("pretokenizers", [pre]) if pre else []
    byte_level = any(p.get("type") == "ByteLevel" for p in pres)
    to_bytes = bytes_to_chars()
    show = (lambda t: t) if byte_level else (lambda t: "".join(to_bytes[b] for b in t.encode("utf-8")))
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for text, i in spec["model"]["vocab"].items():
        if i < vocab_size:
            tokens[i], types[i] = show(text), gguf.TokenType.NORMAL
    for added in spec.get("added_tokens", []):
        if added["id"] < vocab_size:
            tokens[added["id"]] = added["content"]
            types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    return tokens, [int(t) for t in types], merges


def _writer(gguf, path: str, arch: str):
    """gguf.GGUFWriter, able to write an empty array as well. gguf 0.19 refuses one ("Empty
    array"), and its add_array skips one silently; but llama.cpp's "gpt2" tokenizer stops with
    "cannot find tokenizer merges in model file" when tokenizer.ggml.merges is absent, and
    minimoe's byte tokenizer has no merges. GGUF itself allows a count of 0: an array is
    (element type u32, count u64, elements)."""
    class Writer(gguf.GGUFWriter):
        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            if vtype == gguf.GGUFValueType.ARRAY and sub_type is not None and len(val) == 0:
                return (self._pack("I", vtype) if add_vtype else b"") + self._pack("I", sub_type) \
                    + self._pack("Q", 0)
            return super()._pack_val(val, vtype, add_vtype, sub_type)
    return Writer(path, arch=arch)


# llama.cpp's name (tokenizer.ggml.pre) for the pre-tokenizer regexes minimoe.hf_tokenizer knows:
# how llama.cpp splits text into words before the merges (llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_*)
PRE_TOKENIZERS = [
    ("gpt-4o", r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"),  # o200k: gpt-oss
    ("llama-bpe", r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"),        # Llama 3
    ("qwen2", r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"),                 # Qwen2/3
    ("deepseek-v3", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"),                               # DeepSeek-V3
]


def pre_tokenizer_name(spec: dict) -> str:
    """tokenizer.ggml.pre for a tokenizer.json: "gpt-2" for GPT-2's ByteLevel regex, the entry of
    PRE_TOKENIZERS whose regex the Split pre-tokenizers start with, else "default"."""
    pre = spec.get("pre_tokenizer") or {}
    pres = pre.get("pretokenizers", [pre]) if pre else []
    regexes = [p.get("pattern", {}).get("Regex", "") for p in pres if p.get("type") == "Split"]
    for name, start in PRE_TOKENIZERS:
        if any(r.startswith(start) for r in regexes):
            return name
    if any(p.get("type") == "ByteLevel" and p.get("use_regex", True) for p in pres):
        return "gpt-2"
    return "default"


def spm_vocabulary(spec: dict, vocab_size: int):
    """A SentencePiece-style BPE tokenizer.json (Mixtral's, Llama 2's: "▁" for spaces, byte
    fallback to <0xXX> tokens) -> (tokens, scores, token types) for llama.cpp's "llama" model, or
    None. llama.cpp's SPM tokenizer merges the adjacent pair whose joined text is the token with
    the highest score, so a token's score is minus the rank of the merge that makes it (gguf-py's
    LlamaHfVocab writes -1000 for all); single characters and bytes get 0."""
    import gguf
    model = spec.get("model", {})
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        return None
    rank = {}
    for r, m in enumerate(model.get("merges", [])):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(a + b, r)
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    scores = [0.0] * vocab_size
    types = [gguf.TokenType.UNUSED] * vocab_size
    for text, i in model["vocab"].items():
        if i < vocab_size:
            byte = len(text) == 6 and text.startswith("<0x") and text.endswith(">")
            tokens[i], scores[i] = text, -float(rank.get(text, 0 if len(text) == 1 or byte else 1e9))
            types[i] = gguf.TokenType.BYTE if byte else gguf.TokenType.NORMAL
    if model.get("unk_token") in model["vocab"] and model["vocab"][model["unk_token"]] < vocab_size:
        types[model["vocab"][model["unk_token"]]] = gguf.TokenType.UNKNOWN
    for added in spec.get("added_tokens", []):
        if added["id"] < vocab_size:
            tokens[added["id"]], scores[added["id"]] = added["content"], 0.0
            types[added["id"]] = (gguf.TokenType.UNKNOWN if added["content"] == model.get("unk_token") else
                                  gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED)
    return tokens, scores, [int(t) for t in types]


def add_vocabulary(w, tok, vocab_size: int) -> None:
    """Write the tokenizer.ggml.* keys (and minimoe's own tokenizer JSON) to GGUFWriter `w`."""
    import gguf
    from minimoe.io.hf_export import tokenizer_json
    vocab = gguf_vocabulary(tok, vocab_size) if tok is not None else None
    spm = spm_vocabulary(tokenizer_json(tok), vocab_size) if tok is not None and vocab is None else None
    if spm is not None:
        tokens, scores, types = spm
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        ids = {t: i for i, t in enumerate(tokens)}
        for name, add in (("<s>", w.add_bos_token_id), ("</s>", w.add_eos_token_id), ("<unk>", w.add_unk_token_id)):
            if name in ids:
                add(ids[name])
        w.add_add_bos_token(False)           # minimoe's encode adds none; llama.cpp's tokenize(add_bos=True) still can
        w.add_string(TOKENIZER_KEY, tok.to_json())
        return
    if vocab is None:
        w.add_tokenizer_model("none")            # llama.cpp: vocab_size dummy tokens; ids in, logits out
        if tok is not None:
            w.add_string(TOKENIZER_KEY, tok.to_json())
        return
    tokens, types, merges = vocab
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre_tokenizer_name(tokenizer_json(tok)))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_key_value(gguf.Keys.Tokenizer.MERGES, merges, gguf.GGUFValueType.ARRAY,   # even when empty
                    sub_type=gguf.GGUFValueType.STRING)
    w.add_add_bos_token(False)
    special = getattr(tok, "special_tokens", None) or []
    if special and 256 < vocab_size and tokens[256] == special[0]:
        w.add_eos_token_id(256)                  # the byte tokenizer's <|endoftext|>
    w.add_string(TOKENIZER_KEY, tok.to_json())


def load_gguf(path: str):
    """A GGUF of a llama (Mixtral), qwen3moe, olmoe or gpt-oss MoE -> Model. Tensors in a minimoe format
    (q8_0, q4_0, q4_1, mxfp4, q2_k ... q6_k) stay packed; F32, F16 and BF16 become float32."""
    gguf = _gguf()
    from minimoe import quant
    from minimoe.config import Config
    from minimoe.model import Model
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise GGUFError(f"{path}: no such GGUF file")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:                      # the gguf package raises plain ValueError/struct errors
        raise GGUFError(f"{path}: not a readable GGUF file ({e})") from None

    def field(key, required=True):
        f = reader.fields.get(key)
        if f is None:
            if required:
                raise GGUFError(f"{path}: metadata key {key!r} is missing")
            return None
        return f.contents()

    arch = field("general.architecture")
    if arch not in ARCHS:
        raise GGUFError(f"{path}: general.architecture is {arch!r}; minimoe reads {sorted(ARCHS)} (with experts)")
    a = f"{arch}."
    n_heads, n_kv = int(field(a + "attention.head_count")), int(field(a + "attention.head_count_kv"))
    tensors = {t.name: t for t in reader.tensors}
    d_model = int(field(a + "embedding_length"))
    n_ff = int(field(a + "feed_forward_length"))
    d_ff = field(D_FF_KEY, required=False)                  # minimoe's own files: the dense width
    vocab = field(a + "vocab_size", required=False) or int(tensors["token_embd.weight"].shape[-1])
    n_layers = int(field(a + "block_count"))
    extra = gpt_oss_fields(field, a, n_layers) if arch == "gpt-oss" else {}
    cfg = Config(name=os.path.basename(path).removesuffix(".gguf"), vocab_size=int(vocab),
                 d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv,
                 head_dim=int(field(a + "attention.key_length", required=False) or d_model // n_heads),
                 d_ff=n_ff if d_ff is None else int(d_ff),
                 d_expert=int(field(a + "expert_feed_forward_length", required=False) or n_ff),
                 n_experts=int(field(a + "expert_count")), top_k=int(field(a + "expert_used_count")),
                 max_seq_len=int(field(a + "context_length")), rope_theta=f32_value(field(a + "rope.freq_base")),
                 norm_eps=f32_value(field(a + "attention.layer_norm_rms_epsilon")),
                 qk_norm=ARCHS[arch]["qk_norm"],
                 **{k: ARCHS[arch][k] for k in ("router_renorm",) if k in ARCHS[arch]},
                 tie_embeddings="output.weight" not in tensors, **extra)
    params = {}
    for gname, ours, _ in tensor_names(cfg):
        if gname not in tensors:
            raise GGUFError(f"{path}: tensor {gname!r} is missing")
        t = tensors[gname]
        fmt = t.tensor_type.name.lower()
        data = np.asarray(t.data)
        if fmt in ("f32", "f16"):
            value = data.astype(np.float32)
        elif fmt == "bf16":                                           # the top 16 bits of a float32
            value = (data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif fmt in quant.FORMATS:
            shape = tuple(int(n) for n in reversed(t.shape))          # ggml ne is fastest-first
            value = quant.QTensor(fmt, shape, np.ascontiguousarray(data), gname)
            if ours == "embed.weight" or ours.endswith("router.weight"):
                value = value.dequantize()                            # minimoe keeps these in float
        else:
            raise GGUFError(f"{path}: tensor {gname!r} has type {fmt.upper()}, which minimoe does not read")
        if arch == "llama" and gname.endswith(("attn_q.weight", "attn_k.weight")):
            value = _permute(value, n_heads if "attn_q" in gname else n_kv, rope_halves_rows)
        params[ours] = value
    tokenizer = None
    if reader.fields.get(TOKENIZER_KEY) is not None:
        from minimoe.tokenizer import tokenizer_from_dict
        tokenizer = tokenizer_from_dict(json.loads(field(TOKENIZER_KEY)), source=f"{path}: {TOKENIZER_KEY}")
    return Model(cfg, params=params, tokenizer=tokenizer)
