"""Will it run on my machine? Parameters, memory, KV cache, FLOPs and a decode-speed bound, exactly,
from the architecture alone. Every number is a sum a student can redo by hand; docs/estimator.md
writes each formula out.

Shape legend: B batch, T time, C d_model, H heads, G kv heads, D head dim, F ffn width,
E experts, K top-k, V vocab, L keys a query attends to (the context, capped by a sliding window
or an attention chunk); linear attention: Hk key heads of Dk, Hv value heads of Dv.

    result = estimate("gpt-oss-120b", recipe="experts-mxfp4")
    result["total_params"]                116,829,156,672
    result["active_params_non_embedding"]   5,132,849,472     (the published "5.1B active")
    result["weight_bytes"] / 2**30           60.8             (GiB, the released checkpoint)

What counts as "active" (minimoe.params.count_params is the one counter):
    active_params                every parameter one token passes through: all of them except the
                                 routed experts, plus K/E of each MoE layer's routed experts; the
                                 whole embedding table and the whole head are included.
    active_params_non_embedding  active_params minus the embedding table, which is looked up (one
                                 row per token), not multiplied. The output head stays in (every
                                 token multiplies by all of it; a tied table stays in for that reason).
                                 2 x this is the matmul part of the FLOPs per token.
Published figures use these and other conventions (without the head too, with an MTP layer):
minimoe.inspect.published names, for each lab's figure, the convention that reproduces it.

Multi-token-prediction (MTP) layers, which DeepSeek-V3 and GLM-4.5 checkpoints store but
transformers' model does not build, are reported apart (mtp_params); with_mtp=True adds them to
every count, the weights, the KV cache and the FLOPs.

Weight formats (bytes for a tensor of shape (..., n), with rows = prod of the leading dims):
    fp32 4, bf16/fp16 2 bytes per weight                     rows * n * bytes
    q8_0  34 bytes per block of 32 (8.5 bits per weight)     rows * (n / 32) * block_bytes
    q4_0  18 / 32 (4.5)   q4_1  20 / 32 (5.0)   mxfp4  17 / 32 (4.25)
Blocks run along the last axis (the input features), as in GGUF and in gpt-oss's checkpoint. A
matrix whose last axis is not a multiple of 32 cannot be cut into blocks; like minimoe.quant, the
estimator does not pad it: it stays in the recipe's float format for vectors, and the result lists
it under "not_quantized". Vectors (norm scales, biases, sinks) are never block-quantized.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from minimoe.config import Config, ConfigError
from minimoe.errors import MinimoeError
from minimoe.inspect import serving
from minimoe.inspect.hardware import HARDWARE, Hardware, get_hardware, get_link
from minimoe.params import COMPONENTS, component, count_params, param_shapes, role


class EstimateError(MinimoeError, ValueError):
    """Bad input to the estimator: an unknown model, format, recipe, or a bad context/batch."""


# --- formats --------------------------------------------------------------------------------------
FLOAT_BYTES = {"fp64": 8, "fp32": 4, "bf16": 2, "fp16": 2}       # bytes per value
BLOCK_FORMATS = {                                                   # (values, bytes) per block
    "q8_0": (32, 34),    # fp16 scale + 32 int8
    "q4_0": (32, 18),    # fp16 scale + 16 bytes of 4-bit codes
    "q4_1": (32, 20),    # fp16 scale + fp16 min + 16 bytes
    "mxfp4": (32, 17),   # e8m0 scale + 16 bytes of E2M1 codes
}
FORMATS = list(FLOAT_BYTES) + list(BLOCK_FORMATS)
ALIASES = {"float64": "fp64", "f64": "fp64", "float32": "fp32", "f32": "fp32", "bfloat16": "bf16",
           "float16": "fp16", "f16": "fp16", "half": "fp16", "int8": "q8_0", "mxfp4_e2m1": "mxfp4"}
KV_FORMATS = ("fp32", "bf16", "fp16")

# --- recipes: which format each parameter gets -----------------------------------------------------
# A recipe maps a component (see minimoe.params.COMPONENTS) to the format of its weight matrices;
# "default" covers the components it doesn't name, and "vectors" is the float format of every 1-D
# parameter and bias (and of matrices that don't split into blocks).
RECIPES: dict[str, dict[str, str]] = {
    **{f: {"default": f, "vectors": f} for f in FLOAT_BYTES},
    # one block format for every matrix; vectors stay fp32 (as llama.cpp and minimoe.quant keep them)
    **{f: {"default": f, "vectors": "fp32"} for f in BLOCK_FORMATS},
    # gpt-oss as released: the routed experts in MXFP4, everything else bf16
    "experts-mxfp4": {"experts": "mxfp4", "default": "bf16", "vectors": "bf16"},
    "experts-q4_0": {"experts": "q4_0", "default": "bf16", "vectors": "bf16"},
    # in the spirit of llama.cpp's MXFP4_MOE: experts in MXFP4, the other matrices in Q8_0
    "mxfp4-moe-q8_0": {"experts": "mxfp4", "default": "q8_0", "vectors": "fp32"},
}
RECIPE_NOTES = {
    "experts-mxfp4": "routed experts mxfp4, the rest bf16 (how gpt-oss is released)",
    "experts-q4_0": "routed experts q4_0, the rest bf16",
    "mxfp4-moe-q8_0": "routed experts mxfp4, other matrices q8_0, vectors fp32 (like llama.cpp's MXFP4_MOE)",
}
# The precisions every estimate tabulates (and --plot draws).
PRECISIONS = ["fp32", "bf16", "q8_0", "q4_1", "q4_0", "mxfp4", "experts-mxfp4"]

OVERHEAD_FRACTION = 0.10   # activations, runtime buffers, allocator slack: 10% of weights + KV cache
DEFAULT_CONTEXT = 8192


def canonical_format(fmt: str, allowed=None, what: str = "dtype") -> str:
    """'BF16' -> 'bf16', 'int8' -> 'q8_0'; an EstimateError for an unknown name."""
    key = str(fmt).lower()
    key = ALIASES.get(key, key)
    allowed = FORMATS if allowed is None else allowed
    if key not in allowed:
        raise EstimateError(f"unknown {what} {fmt!r}; known: {', '.join(allowed)}"
                            + (" (int8 means q8_0)" if "q8_0" in allowed else ""))
    return key


def get_recipe(dtype: str | None = None, recipe=None) -> tuple[str, dict[str, str]]:
    """(label, rules) for a uniform dtype, a recipe name, or a recipe dict; bf16 if neither is given."""
    if dtype is not None and recipe is not None:
        raise EstimateError(f"give a dtype or a recipe, not both (found dtype={dtype!r}, recipe={recipe!r})")
    if recipe is None:
        name = canonical_format(dtype if dtype is not None else "bf16")
        return name, RECIPES[name]
    if isinstance(recipe, dict):
        rules = dict(recipe)
        bad = sorted(set(rules) - set(COMPONENTS) - {"default", "vectors"})
        if bad or "default" not in rules:
            raise EstimateError(f"a recipe dict needs a 'default' format and keys among "
                                f"{list(COMPONENTS) + ['default', 'vectors']}; found {sorted(rules)}")
        rules = {k: canonical_format(v, what=f"format for {k!r}") for k, v in rules.items()}
        rules.setdefault("vectors", rules["default"] if rules["default"] in FLOAT_BYTES else "fp32")
        if rules["vectors"] not in FLOAT_BYTES:
            raise EstimateError(f"recipe 'vectors' must be a float format {list(FLOAT_BYTES)}, "
                                f"found {rules['vectors']!r}")
        return "custom", rules
    key = str(recipe).lower()
    if key in RECIPES:
        return key, RECIPES[key]
    if ALIASES.get(key) in RECIPES:
        return ALIASES[key], RECIPES[ALIASES[key]]
    from minimoe.quant.model import RECIPES as QUANT_RECIPES
    if key in QUANT_RECIPES:
        # a recipe of minimoe.quantize ("mxfp4-moe", "q4_0-moe"): priced exactly as that function
        # packs a minimoe model, with what it leaves alone in float32
        r = QUANT_RECIPES[key]
        if all(f in FORMATS for f in r.formats.values()):
            return key, {**r.formats, "default": "fp32", "vectors": "fp32"}
    known = list(RECIPES) + [k for k in QUANT_RECIPES if k not in RECIPES]
    raise EstimateError(f"unknown recipe {recipe!r}; known: {', '.join(known)}")


# --- weights -----------------------------------------------------------------------------------------
def tensor_bytes(shape: tuple[int, ...], fmt: str) -> int:
    """Bytes of one tensor stored in `fmt`. Block formats need the last axis to split into blocks."""
    n = int(np.prod(shape))
    if fmt in FLOAT_BYTES:
        return n * FLOAT_BYTES[fmt]
    values, nbytes = BLOCK_FORMATS[fmt]
    if shape[-1] % values:
        raise EstimateError(f"shape {shape}: last axis {shape[-1]} is not a multiple of {fmt}'s "
                            f"block of {values}")
    return n // values * nbytes


def is_vector(name: str, shape: tuple[int, ...]) -> bool:
    """Norm scales, biases (the experts' (E, F) biases too) and sinks: never block-quantized."""
    return len(shape) == 1 or name.endswith(("bias", ".sinks"))


def weight_plan(cfg: Config, rules: dict[str, str], with_mtp: bool = False) -> dict[str, dict]:
    """name -> {shape, component, fmt, bytes, fallback}: where every parameter's bytes come from.
    A tensor takes the format of the part it plays (an MTP layer's experts are experts)."""
    plan = {}
    for name, shape in param_shapes(cfg, with_mtp).items():
        c = component(name)
        fmt = rules["vectors"] if is_vector(name, shape) else rules.get(role(name), rules["default"])
        fallback = None
        if fmt in BLOCK_FORMATS and shape[-1] % BLOCK_FORMATS[fmt][0]:
            fallback = (f"last axis {shape[-1]} is not a multiple of {BLOCK_FORMATS[fmt][0]}: "
                        f"kept in {rules['vectors']} instead of {fmt}")
            fmt = rules["vectors"]
        plan[name] = {"shape": shape, "component": c, "fmt": fmt, "bytes": tensor_bytes(shape, fmt),
                      "fallback": fallback}
    return plan


def touched_bytes(cfg: Config, name: str, entry: dict) -> int:
    """Bytes of this parameter one decoded token reads (batch 1).

    embedding (untied): one row of V, read by a lookup        1 * C values
    routed experts (E, ...): the K chosen experts              K/E of the bytes (an MTP layer's too)
    everything else (the head and a tied table too): all of it
    """
    shape, fmt = entry["shape"], entry["fmt"]
    if name == "embed.weight" and not cfg.tie_embeddings:
        return tensor_bytes((1, shape[1]), fmt)
    if role(name) == "experts":
        return entry["bytes"] // cfg.n_experts * cfg.top_k
    return entry["bytes"]


# --- KV cache, linear-attention state and attention FLOPs ------------------------------------------
STATE_BYTES = 4   # linear attention's recurrent state S stays float32 (as transformers keeps it)


def kv_values_per_token(cfg: Config) -> int:
    """Values one layer caches per token: 2*G*D (K and V), or MLA's latent kv_lora_rank + rope dim."""
    if cfg.attention == "mla":
        return cfg.kv_lora_rank + cfg.qk_rope_head_dim
    return 2 * cfg.n_kv_heads * cfg.head_dim


def attention_layers(cfg: Config, with_mtp: bool = False) -> list[int]:
    """The layers that keep a KV cache: all but the linear-attention ones (with_mtp: the MTP layers
    too, numbered after the model's)."""
    n = cfg.n_layers + (cfg.n_mtp_layers if with_mtp else 0)
    return [i for i in range(n) if not cfg.is_linear_layer(i)]


def keys_kept(cfg: Config, layer: int, context: int) -> int:
    """L: the tokens of K and V a layer holds while the query at position `context` attends (itself
    included): the context, capped by a sliding window or an attention chunk (a chunked layer must
    hold a whole chunk when the query is the chunk's last token)."""
    w = cfg.window(layer) or cfg.chunk(layer)
    return min(context, w) if w else context


def keys_attended(cfg: Config, layer: int, context: int) -> int:
    """The keys the query at position `context` scores against (itself included): the last `window`
    on a sliding layer; only those of its own chunk on a chunked one, (context - 1) % chunk + 1."""
    c = cfg.chunk(layer)
    return (context - 1) % c + 1 if c else keys_kept(cfg, layer, context)


def kv_cache_bytes(cfg: Config, context: int, batch: int = 1, kv_dtype: str = "bf16",
                   with_mtp: bool = False) -> int:
    """sum over attention layers of  batch * L_layer * values_per_token * bytes  (L capped by the
    window or chunk; a linear-attention layer keeps no KV cache)."""
    per = kv_values_per_token(cfg) * FLOAT_BYTES[kv_dtype]
    return batch * per * sum(keys_kept(cfg, i, context) for i in attention_layers(cfg, with_mtp))


def kv_bytes_read(cfg: Config, context: int, kv_dtype: str = "bf16", with_mtp: bool = False) -> int:
    """Bytes of K and V the query at position `context` reads (one sequence): its attended keys."""
    per = kv_values_per_token(cfg) * FLOAT_BYTES[kv_dtype]
    return per * sum(keys_attended(cfg, i, context) for i in attention_layers(cfg, with_mtp))


def linear_state_values(cfg: Config) -> tuple[int, int]:
    """(conv, S): values one linear-attention layer keeps per sequence, however long the context.

    conv  the last K_conv inputs of its causal convolution over q, k and v, which it needs to
          convolve the next token: (2*Hk*Dk + Hv*Dv) * K_conv
    S     the gated delta rule's memory, one Dk x Dv matrix per value head: Hv * Dk * Dv
    """
    Hk, Hv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
    Dk, Dv = cfg.linear_key_head_dim, cfg.linear_value_head_dim
    return (2 * Hk * Dk + Hv * Dv) * cfg.linear_conv_kernel, Hv * Dk * Dv


def linear_state_bytes(cfg: Config, batch: int = 1, kv_dtype: str = "bf16") -> int:
    """batch * linear layers * (conv * bytes(kv_dtype) + S * 4): constant in the context."""
    conv, S = linear_state_values(cfg)
    return batch * len(cfg.linear_layers) * (conv * FLOAT_BYTES[kv_dtype] + S * STATE_BYTES)


def attention_flops_per_key(cfg: Config) -> int:
    """FLOPs one query spends per key it attends to, in one layer (2 FLOPs per multiply-add).

    GQA: scores q.k over D, then values a*v over D, for each of H heads:    2*H*D + 2*H*D
    MLA (absorbed, as served from a latent cache): scores over kv_lora + rope, values over kv_lora:
                                                        2*H*(kv_lora + rope) + 2*H*kv_lora
    The projections that absorb W_UK and W_UV are kv_b's weights, already in 2 * active params.
    """
    H = cfg.n_heads
    if cfg.attention == "mla":
        return 2 * H * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + 2 * H * cfg.kv_lora_rank
    return 4 * H * cfg.head_dim


def linear_flops_per_token(cfg: Config) -> int:
    """FLOPs one token spends in one linear-attention layer beyond its projections (which are in
    2 * active params), counted in the recurrent form:

    convolution   each of the 2*Hk*Dk + Hv*Dv channels over K_conv taps      2 * channels * K_conv
    delta rule    per value head, on its Dk x Dv state S:
                  decay S <- g*S (Dk*Dv), recall u = S^T k (2*Dk*Dv),
                  write S <- S + k (beta*(v - u))^T (2*Dk*Dv), read o = S^T q (2*Dk*Dv)
                                                                           7 * Hv * Dk * Dv
    """
    if not cfg.linear_layers:
        return 0
    conv, S = linear_state_values(cfg)
    return 2 * conv + 7 * S


def _sum_keys(n: int, w: int, chunk: int = 0) -> int:
    """Keys seen across a prompt of n tokens: sum over t = 1..n of min(t, w) (w = 0: no window),
    or with chunks, of (t - 1) % chunk + 1."""
    if chunk:
        full, rest = divmod(n, chunk)
        return full * chunk * (chunk + 1) // 2 + rest * (rest + 1) // 2
    if not w or n <= w:
        return n * (n + 1) // 2
    return w * (w + 1) // 2 + (n - w) * w


def flops(cfg: Config, counts: dict, context: int, with_mtp: bool = False) -> dict:
    """FLOPs per token: decode at `context`, and prefill of a `context`-token prompt (per token).
    The token-mixing terms ("attention") include the linear-attention layers' recurrence."""
    matmul = 2 * counts["active_non_embedding"]
    a, layers = attention_flops_per_key(cfg), attention_layers(cfg, with_mtp)
    linear = len(cfg.linear_layers) * linear_flops_per_token(cfg)
    decode_attn = sum(a * keys_attended(cfg, i, context) for i in layers) + linear
    prefill_attn_total = (sum(a * _sum_keys(context, cfg.window(i), cfg.chunk(i)) for i in layers)
                          + linear * context)
    return {"matmul": matmul, "attention_per_key_per_layer": a, "linear_per_token_per_layer":
            linear_flops_per_token(cfg),
            "decode": matmul + decode_attn, "decode_attention": decode_attn,
            "prefill": matmul + prefill_attn_total / context,
            "prefill_attention": prefill_attn_total / context,
            "prefill_total": matmul * context + prefill_attn_total}


# --- inputs ----------------------------------------------------------------------------------------
def _config_from_json_dict(d: dict, source: str) -> Config:
    from minimoe.io.hf_config import config_from_hf
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a JSON object, found {type(d).__name__}")
    if d.get("model_type", "minimoe") == "minimoe":
        return Config.from_dict(d, source)
    return config_from_hf(d, source)


def resolve(target) -> tuple[Config, str, object, int | None]:
    """(config, source, model or None, bytes stored on disk or None) for anything estimate() takes."""
    from minimoe.presets import PRESETS
    if hasattr(target, "config") and hasattr(target, "params"):
        return target.config, f"minimoe model ({target.config.name or 'custom'})", target, None
    if isinstance(target, Config):
        return target, f"config ({target.name or 'custom'})", None, None
    if isinstance(target, dict):
        return _config_from_json_dict(target, "config dict"), "config dict", None, None
    if not isinstance(target, (str, os.PathLike)):
        raise EstimateError(f"estimate() takes a preset name, a config.json path, a checkpoint folder, "
                            f"a Config or a Model; found {type(target).__name__}")
    name = os.fspath(target)
    if name.lower() in PRESETS and not os.path.exists(name):
        return Config.preset(name), f"preset {name.lower()}", None, None
    if os.path.isdir(name):
        path, stored = os.path.join(name, "config.json"), _stored_bytes(name)
        if not os.path.isfile(path):
            raise EstimateError(f"{name}: a folder without config.json; expected a minimoe checkpoint "
                                f"or a Hugging Face model folder")
    elif os.path.isfile(name):
        path, stored = name, None
    else:
        raise EstimateError(f"unknown model {name!r}: not a preset and no such file or folder; "
                            f"presets: {', '.join(PRESETS)}")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    return _config_from_json_dict(d, path), path, None, stored


def _stored_bytes(folder: str) -> int | None:
    """Bytes of tensor data in a folder's safetensors files (read from their headers), or None."""
    if not any(f.endswith(".safetensors") for f in os.listdir(folder)):
        return None
    from minimoe.io.checkpoint import tensor_dtypes
    return sum(tensor_dtypes(folder).values())


def _model_plan(model) -> dict[str, dict]:
    """The weight plan of a loaded model: each array's own format, its bytes by the formula, and
    the bytes it really holds (arr.nbytes; a QTensor's packed blocks)."""
    cfg, plan = model.config, {}
    for name, arr in model.params.items():
        if hasattr(arr, "fmt"):        # a QTensor: logical float shape, packed blocks
            fmt, shape, actual = canonical_format(arr.fmt), tuple(arr.shape), int(arr.blocks.nbytes)
        else:
            arr = np.asarray(arr)
            fmt = {np.dtype(np.float64): "fp64", np.dtype(np.float32): "fp32",
                   np.dtype(np.float16): "fp16"}.get(arr.dtype)
            if fmt is None:
                raise EstimateError(f"parameter {name!r} has dtype {arr.dtype}; expected float64, "
                                    f"float32, float16 or a packed QTensor")
            shape, actual = arr.shape, int(arr.nbytes)
        plan[name] = {"shape": shape, "component": component(name), "fmt": fmt,
                      "bytes": tensor_bytes(shape, fmt), "actual_bytes": actual, "fallback": None}
    return plan


# --- the estimate -----------------------------------------------------------------------------------
def estimate(target, *, dtype: str | None = None, recipe=None, context: int = DEFAULT_CONTEXT,
             batch: int = 1, hardware: str | None = None, memory_gb: float | None = None,
             bandwidth_gbs: float | None = None, kv_dtype: str = "bf16",
             overhead: float = OVERHEAD_FRACTION, with_mtp: bool = False,
             offload_experts: bool = False, host: str = "ddr5-desktop", link: str = "pcie4-x16") -> dict:
    """Parameters, weight bytes, KV cache, FLOPs and hardware verdicts for a model.

    target    a preset name ("gpt-oss-120b"), a config.json path (minimoe or Hugging Face), a
              checkpoint folder, a Config, or a loaded minimoe Model (then the weights are counted
              in the formats the model holds them, unless dtype/recipe says otherwise)
    dtype     one format for every matrix (fp32, bf16, fp16, q8_0/int8, q4_0, q4_1, mxfp4)
    recipe    a name from RECIPES (e.g. "experts-mxfp4") or a dict {component: format, "default": ...}
    context   tokens in the KV cache (and the prompt length for prefill FLOPs)
    batch     sequences held in the KV cache at once
    hardware  a name from minimoe.inspect.hardware.HARDWARE; memory_gb + bandwidth_gbs describe a
              custom device; with none of the three, every device in the table gets a verdict
    with_mtp  count the config's multi-token-prediction layers as part of the model (their weights,
              their KV cache, their FLOPs): the released checkpoints store them. Without it they
              are reported apart (mtp_params, mtp_weight_bytes)
    offload_experts  keep the routed experts in `host` RAM (a HARDWARE name) and the rest on the
              one GPU `hardware` names, joined by `link` (minimoe.inspect.hardware.LINKS); adds
              result["offload"] (minimoe/inspect/serving.py)

    result["batched_decode"] is one decode step of `batch` sequences: the distinct experts it
    touches, E (1 - (1 - K/E)^batch) per layer, its bytes and each device's tokens/s bound.
    """
    for what, v in (("context", context), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise EstimateError(f"{what} must be a positive integer, found {v!r}")
    if isinstance(overhead, bool) or not isinstance(overhead, (int, float)) or not 0 <= overhead < 10:
        raise EstimateError(f"overhead must be a fraction such as 0.1, found {overhead!r}")
    kv_dtype = canonical_format(kv_dtype, KV_FORMATS, "kv_dtype")
    cfg, source, model, stored = resolve(target)
    if model is not None and with_mtp:
        raise EstimateError("with_mtp adds the MTP layers a config declares; a loaded minimoe Model "
                            "holds its arrays and no MTP layer (estimate its config instead)")
    counts = model.param_counts() if model is not None else count_params(cfg, with_mtp)

    if model is not None and dtype is None and recipe is None:
        label, rules, plan, mtp_plan = "as loaded", None, _model_plan(model), {}
    else:
        label, rules = get_recipe(dtype, recipe)
        full = weight_plan(cfg, rules, with_mtp=True)
        mtp_plan = {n: e for n, e in full.items() if e["component"] == "mtp"}
        plan = full if with_mtp else {n: e for n, e in full.items() if n not in mtp_plan}
    weight_bytes = sum(e["bytes"] for e in plan.values())
    by_precision = {p: sum(e["bytes"] for e in weight_plan(cfg, get_recipe(recipe=p)[1], with_mtp).values())
                    for p in PRECISIONS}
    bytes_by_component = {c: 0 for c in COMPONENTS}
    for e in plan.values():
        bytes_by_component[e["component"]] += e["bytes"]

    kv = kv_cache_bytes(cfg, context, batch, kv_dtype, with_mtp)
    state = linear_state_bytes(cfg, batch, kv_dtype)
    overhead_bytes = int(round(overhead * (weight_bytes + kv + state)))
    need = weight_bytes + kv + state + overhead_bytes
    touched_by_component = {c: 0 for c in COMPONENTS}
    for n, e in plan.items():
        touched_by_component[e["component"]] += touched_bytes(cfg, n, e)
    weights_per_token = sum(touched_by_component.values())
    kv_read = kv_bytes_read(cfg, context, kv_dtype, with_mtp)
    state_traffic = 2 * linear_state_bytes(cfg, 1, kv_dtype)     # S is read and written back per token
    per_token = weights_per_token + kv_read + state_traffic
    f = flops(cfg, counts, context, with_mtp)

    parts = serving.split_touched(cfg, plan, touched_bytes)
    step = serving.batched_step(cfg, parts, batch, kv_read, state_traffic)
    if hardware is None and memory_gb is None and bandwidth_gbs is None:
        devices = list(HARDWARE.values())
    else:
        devices = [get_hardware(hardware, memory_gb, bandwidth_gbs)]
    verdicts = [verdict(hw, need, per_token) for hw in devices]

    result = {
        "name": cfg.name or "custom", "source": source, "config": cfg.to_dict(),
        "total_params": counts["total"],
        "active_params": counts["active"],
        "active_params_non_embedding": counts["active_non_embedding"],
        "embedding_params": counts["embedding"],
        "params_by_component": {c: {"total": counts["by_component"][c],
                                    "active": counts["active_by_component"][c]} for c in COMPONENTS},
        "with_mtp": with_mtp, "mtp_layers": cfg.n_mtp_layers,
        "mtp_params": counts["mtp"], "mtp_active_params": counts["mtp_active"],
        "precision": label, "recipe": rules,
        "weight_bytes": weight_bytes,
        "weight_bytes_by_component": bytes_by_component,
        "weight_bytes_by_precision": by_precision,
        "mtp_weight_bytes": sum(e["bytes"] for e in mtp_plan.values()),
        "not_quantized": {n: e["fallback"] for n, e in plan.items() if e["fallback"]},
        "context": context, "batch": batch, "kv_dtype": kv_dtype,
        "kv_cache_bytes": kv,
        "recurrent_state_bytes": state,
        "overhead_fraction": overhead, "overhead_bytes": overhead_bytes,
        "memory_bytes": need,
        "bytes_per_token": per_token, "weight_bytes_per_token": weights_per_token,
        "weight_bytes_per_token_by_component": touched_by_component,
        "kv_bytes_per_token_read": kv_read,
        "recurrent_state_bytes_per_token": state_traffic,
        "flops_per_token": {"decode": f["decode"], "prefill": f["prefill"], "matmul": f["matmul"],
                            "decode_attention": f["decode_attention"],
                            "prefill_attention": f["prefill_attention"],
                            "prefill_total": f["prefill_total"]},
        "hardware": verdicts,
    }
    step["tokens_per_s_upper"] = {hw.name: hw.bandwidth_gbs * 1e9 * batch / step["step_bytes"] for hw in devices}
    result["batched_decode"] = step
    if offload_experts:
        if len(devices) != 1:
            raise EstimateError("offload_experts needs one GPU: give hardware (e.g. rtx-4090) or "
                                "memory_gb and bandwidth_gbs")
        if not cfg.n_experts:
            raise EstimateError(f"offload_experts: {cfg.name or 'this model'} has no routed experts")
        result["offload"] = serving.offload_experts(plan, parts, step, kv, state, overhead, devices[0],
                                                    get_hardware(host), get_link(link))
    if model is not None:
        result["measured_weight_bytes"] = sum(
            e.get("actual_bytes", e["bytes"]) for e in plan.values()) if rules is None else None
    if stored is not None:
        result["stored_weight_bytes"] = stored
    if source.startswith("preset "):
        from minimoe.inspect.published import reproduce
        result["published"] = [{k: v for k, v in row.items() if k != "ours"}
                               for row in reproduce(source.split(" ", 1)[1], cfg)]
    result["formulas"] = formulas(cfg, result, f)
    return result


def verdict(hw: Hardware, need: int, per_token: int) -> dict:
    """Does it fit, on how many devices, and the bandwidth bound on batch-1 decode speed.

    devices_needed  = ceil(memory needed / usable memory per device)
    tokens/s upper  = bandwidth / bytes read per token. One device's bandwidth: split across n
                      devices layer by layer (pipeline), a token still streams through one at a
                      time; tensor parallelism could at best multiply the bound by n.
    """
    devices = max(1, math.ceil(need / hw.usable_bytes))
    return {"hardware": hw.name, "memory_gb": hw.memory_gb,
            "usable_gb": hw.usable_bytes / 1e9, "bandwidth_gbs": hw.bandwidth_gbs,
            "fits": devices == 1, "devices_needed": devices,
            "decode_tokens_per_s_upper": hw.bandwidth_gbs * 1e9 / per_token, "note": hw.note}


def _layer_sum(cfg: Config, keys, context: int, with_mtp: bool) -> str:
    """'18*8,192 + 18*128': the attention layers grouped by how many keys `keys` gives them."""
    count: dict[int, int] = {}
    for i in attention_layers(cfg, with_mtp):
        L = keys(cfg, i, context)
        count[L] = count.get(L, 0) + 1
    return " + ".join(f"{n}*{L:,}" for L, n in sorted(count.items(), reverse=True)) or "0"


def formulas(cfg: Config, r: dict, f: dict) -> dict[str, str]:
    """The arithmetic behind the headline numbers, written out with this model's values."""
    H, G, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    if cfg.attention == "mla":
        per = f"(kv_lora_rank + rope dim) = ({cfg.kv_lora_rank} + {cfg.qk_rope_head_dim})"
        attn = (f"2*H*(kv_lora+rope) + 2*H*kv_lora = 2*{H}*{cfg.kv_lora_rank + cfg.qk_rope_head_dim}"
                f" + 2*{H}*{cfg.kv_lora_rank} = {f['attention_per_key_per_layer']:,}")
    else:
        per = f"2*G*D = 2*{G}*{D}"
        attn = f"4*H*D = 4*{H}*{D} = {f['attention_per_key_per_layer']:,}"
    ctx, mtp, nbytes = r["context"], r["with_mtp"], FLOAT_BYTES[r["kv_dtype"]]
    kept, attended = _layer_sum(cfg, keys_kept, ctx, mtp), _layer_sum(cfg, keys_attended, ctx, mtp)
    linear = ""
    if cfg.linear_layers:
        n = len(cfg.linear_layers)
        linear = f" + {n} linear layers * {f['linear_per_token_per_layer']:,}"
    out = {
        "weights": "sum over tensors of rows*n*bytes (float) or rows*(n/32)*block_bytes (blocks)",
        "kv_cache": (f"batch * (sum over attention layers of L) * {per} values * {nbytes} bytes "
                     f"= {r['batch']} * ({kept}) * {kv_values_per_token(cfg)} * "
                     f"{nbytes} = {r['kv_cache_bytes']:,} bytes "
                     f"(L = keys a layer keeps: the context, or its sliding window or chunk)"),
        "overhead": (f"{r['overhead_fraction']:g} * (weights + KV cache + recurrent state) "
                     f"= {r['overhead_bytes']:,} bytes"),
        "flops_decode": (f"2 * active_non_embedding + ({attn}) * sum over layers of L{linear} = "
                         f"2 * {r['active_params_non_embedding']:,} + {f['attention_per_key_per_layer']:,}"
                         f" * ({attended}){linear} = {f['decode']:,} FLOPs per token at context "
                         f"{ctx:,}"),
        "flops_prefill": (f"2 * active_non_embedding + (per-key FLOPs) * (sum over layers and prompt "
                          f"positions t of the keys t attends to) / context{linear} = "
                          f"{f['prefill']:,.0f} FLOPs per token for a {ctx:,}-token prompt"),
        "decode_bound": ("tokens/s <= bandwidth / bytes per token; bytes per token = touched weights "
                         f"({r['weight_bytes_per_token']:,}: non-expert weights, K/E of the experts, one "
                         f"embedding row) + the KV cache the token attends to ({r['kv_bytes_per_token_read']:,})"
                         + (f" + the recurrent state read and written ({r['recurrent_state_bytes_per_token']:,})"
                            if cfg.linear_layers else "")
                         + f" = {r['bytes_per_token']:,}"),
    }
    if cfg.linear_layers:
        conv, S = linear_state_values(cfg)
        out["recurrent_state"] = (
            f"batch * linear layers * (conv window (2*Hk*Dk + Hv*Dv)*K_conv * {nbytes} bytes + "
            f"S Hv*Dk*Dv * {STATE_BYTES} bytes) = {r['batch']} * {len(cfg.linear_layers)} * "
            f"({conv:,} * {nbytes} + {S:,} * {STATE_BYTES}) = {r['recurrent_state_bytes']:,} bytes, "
            f"whatever the context")
    return out


# --- printing ----------------------------------------------------------------------------------------
def _gb(n: float) -> str:
    """Bytes as GB (10^9), or MB/KB for small models."""
    for div, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if n >= div:
            return f"{n / div:,.1f} {unit}"
    return f"{n:,.0f} bytes"


def _g(x: float) -> str:
    """A table cell: 1,342.1 or 24.0 for big values, 2 significant digits for small ones."""
    return f"{x:,.1f}" if x >= 1 else f"{x:.2g}"


def _b(n: int) -> str:
    """A parameter count as 1.03T / 116.83B / 5.13B / 800.00K."""
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def report(r: dict) -> str:
    """A readable breakdown of an estimate(), with its working."""
    fr = r["formulas"]
    lines = [f"{r['name']}   ({r['source']})", "",
             f"parameters        {'total':>17} {'active per token':>17}"]
    for c, v in r["params_by_component"].items():
        if v["total"]:
            lines.append(f"  {c:<15} {v['total']:>17,} {v['active']:>17,}")
    lines += [f"  {'all':<15} {r['total_params']:>17,} {r['active_params']:>17,}",
              f"  active non-embedding {r['active_params_non_embedding']:,} ({_b(r['active_params_non_embedding'])}): "
              "active minus the embedding table (looked up, not multiplied); the head counts"]
    if r["mtp_layers"]:
        lines.append(f"  MTP layers ({r['mtp_layers']}): {r['mtp_params']:,} parameters "
                     f"({r['mtp_active_params']:,} active), stored in the checkpoint but not built by "
                     f"transformers; " + ("included above (with_mtp)" if r["with_mtp"] else
                                          f"not included above: add them with --with-mtp "
                                          f"(+{_gb(r['mtp_weight_bytes'])} of weights)"))
    for p in r.get("published", []):
        lines.append(f"  published {p['quantity']} {p['figure']}: "
                     + ("; ".join(p["matches"]) + (" (cut, not rounded)" if p["how"] == "cut" else "")
                        if p["matches"] else "not reproduced by any convention")
                     + (" -- the MTP layer explains the gap" if p["mtp_explains_gap"] else ""))
    lines.append("")
    prec = r["precision"] + (f" = {RECIPE_NOTES[r['precision']]}" if r["precision"] in RECIPE_NOTES else "")
    gib = f" = {r['weight_bytes'] / 2**30:,.2f} GiB" if r["weight_bytes"] >= 2**30 else ""
    lines += [f"weights in {prec}: {r['weight_bytes']:,} bytes{gib} = {_gb(r['weight_bytes'])}"]
    if r.get("measured_weight_bytes") is not None:
        lines.append(f"  bytes of the loaded arrays: {r['measured_weight_bytes']:,}")
    if r.get("stored_weight_bytes") is not None:
        lines.append(f"  bytes in the folder's safetensors files: {r['stored_weight_bytes']:,}")
    for n, why in list(r["not_quantized"].items())[:5]:
        lines.append(f"  not quantized: {n} ({why})")
    if len(r["not_quantized"]) > 5:
        lines.append(f"  ... and {len(r['not_quantized']) - 5} more tensors not quantized")
    lines.append("  every precision: " + " | ".join(
        f"{p} {_gb(b)}" for p, b in r["weight_bytes_by_precision"].items()))
    lines += ["", f"KV cache ({r['kv_dtype']}, context {r['context']:,}, batch {r['batch']}): "
              f"{r['kv_cache_bytes']:,} bytes = {_gb(r['kv_cache_bytes'])}",
              f"  {fr['kv_cache']}"]
    if "recurrent_state" in fr:
        lines += [f"recurrent state of the linear-attention layers: {r['recurrent_state_bytes']:,} bytes "
                  f"= {_gb(r['recurrent_state_bytes'])}", f"  {fr['recurrent_state']}"]
    lines += [f"overhead margin: {fr['overhead']}",
              f"memory needed: weights + KV cache + recurrent state + overhead = {r['memory_bytes']:,} "
              f"bytes = {_gb(r['memory_bytes'])}", "",
              f"compute per token (context {r['context']:,}):",
              f"  decode  {r['flops_per_token']['decode'] / 1e9:,.2f} GFLOP   {fr['flops_decode']}",
              f"  prefill {r['flops_per_token']['prefill'] / 1e9:,.2f} GFLOP   {fr['flops_prefill']}",
              "", f"bytes read per decoded token (batch 1): {_gb(r['bytes_per_token'])}",
              f"  {fr['decode_bound']}", "",
              f"{'hardware':<38}{'usable':>9}{'fits':>6}{'devices':>9}{'decode tok/s <=':>17}"]
    for v in r["hardware"]:
        lines.append(f"{v['hardware']:<38}{v['usable_gb']:>6.0f} GB{'yes' if v['fits'] else 'no':>6}"
                     f"{v['devices_needed']:>9}{v['decode_tokens_per_s_upper']:>17,.1f}")
    lines.append("(decode bound: one device's bandwidth / bytes per token; tensor parallelism over n "
                 "devices could at best multiply it by n)")
    lines += _serving_report(r)
    return "\n".join(lines)


def _serving_report(r: dict) -> list[str]:
    """The batched-decode and offload sections of the report (minimoe/inspect/serving.py)."""
    s, lines = r["batched_decode"], []
    cfg = r["config"]
    if s["batch"] > 1:
        lines += ["", f"batched decode, {s['batch']} sequences per step:"]
        if cfg["n_experts"]:
            E, K = cfg["n_experts"], cfg["top_k"]
            lines.append(f"  distinct experts per MoE layer ~ E (1 - (1 - K/E)^B) = {E} (1 - (1 - {K}/{E})^{s['batch']}) "
                         f"= {s['distinct_experts_per_layer']:.2f} of {E} (uniform routing)")
        lines += [f"  bytes per step: weights {_gb(s['weight_bytes'])} + KV cache {_gb(s['kv_bytes'])}"
                  + (f" + state {_gb(s['state_bytes'])}" if s["state_bytes"] else "")
                  + f" = {_gb(s['step_bytes'])}, {_gb(s['bytes_per_token'])} per token",
                  f"  {'hardware':<38}{'decode tok/s <= (all sequences)':>32}"]
        for name, tps in s["tokens_per_s_upper"].items():
            lines.append(f"  {name:<38}{tps:>32,.1f}")
    o = r.get("offload")
    if o:
        lines += ["", f"experts offloaded: routed experts in {o['host']}, the rest on {o['gpu']}, "
                      f"link {o['link_gbs']:g} GB/s",
                  f"  GPU holds {_gb(o['gpu_bytes'])} (non-expert weights + KV cache + state + "
                  f"{r['overhead_fraction']:.0%}) of {_gb(o['gpu_usable_bytes'])}: "
                  + ("fits" if o["gpu_fits"] else "does NOT fit"),
                  f"  host RAM holds {_gb(o['host_bytes'])} of experts of {_gb(o['host_usable_bytes'])}: "
                  + ("fits" if o["host_fits"] else "does NOT fit")
                  + " (leave room for the operating system)",
                  f"  per step: GPU reads {_gb(o['gpu_bytes_per_step'])}, experts {_gb(o['expert_bytes_per_step'])}",
                  f"  decode tok/s <= {o['tokens_per_s_upper_experts_on_cpu']:,.1f} with the experts computed "
                  f"on the CPU (llama.cpp --n-cpu-moe), {o['tokens_per_s_upper_experts_over_link']:,.1f} if "
                  f"they were copied over the link each step"]
    return lines


def compare_names() -> list[str]:
    """Every preset: the real models first, then minimoe's own small ones."""
    from minimoe.presets import PRESETS, REAL_MODELS
    return REAL_MODELS + [n for n in PRESETS if n not in REAL_MODELS]


def compare(names=None, *, dtype=None, recipe=None, context: int = DEFAULT_CONTEXT,
            with_mtp: bool = False) -> str:
    """One line per preset: parameters, weight memory per precision, KV cache, FLOPs, H100 fit;
    then each lab's published figures beside ours (minimoe.inspect.published)."""
    from minimoe.inspect.published import table
    names = compare_names() if names is None else names
    label = get_recipe(dtype, recipe)[0]
    head = (f"{'preset':<24}{'total':>9}{'active':>9}{'act-emb':>9}{'MTP':>8}{'bf16':>9}{'q8_0':>9}"
            f"{'q4_0':>9}{'exp-mxfp4':>10}{'KV@ctx':>8}{'GFLOP/tok':>10}  H100s ({label})")
    lines = [f"context {context:,} tokens, KV cache bf16, batch 1; memory in GB (10^9 bytes) of weights "
             f"alone except the last column (weights + KV + {OVERHEAD_FRACTION:.0%}); KV@ctx includes "
             f"linear attention's recurrent state; MTP: parameters of the MTP layers, "
             + ("included in every column" if with_mtp else "not in the other columns (--with-mtp adds them)"),
             head, "-" * len(head)]
    for n in names:
        r = estimate(n, dtype=dtype, recipe=recipe, context=context, hardware="h100", with_mtp=with_mtp)
        p = r["weight_bytes_by_precision"]
        gb = [p["bf16"], p["q8_0"], p["q4_0"], p["experts-mxfp4"]]
        lines.append(f"{n:<24}{_b(r['total_params']):>9}{_b(r['active_params']):>9}"
                     f"{_b(r['active_params_non_embedding']):>9}"
                     f"{_b(r['mtp_params']) if r['mtp_params'] else '-':>8}"
                     + "".join(f"{_g(x / 1e9):>9}" for x in gb[:3]) + f"{_g(gb[3] / 1e9):>10}"
                     + f"{_g((r['kv_cache_bytes'] + r['recurrent_state_bytes']) / 1e9):>8}"
                     + f"{_g(r['flops_per_token']['decode'] / 1e9):>10}"
                     + f"  {r['hardware'][0]['devices_needed']}")
    return "\n".join(lines) + "\n\n" + table(names)


def plot_memory(r: dict, path: str, hardware=None) -> str:
    """Bars: memory needed (weights + KV cache + state + overhead) per precision; lines: each device's
    usable memory. Written atomically as an image (format from the file name); returns the path."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from minimoe.io.atomic import atomic_write_bytes
    devices = list(HARDWARE.values()) if hardware is None else hardware
    extra = r["kv_cache_bytes"] + r["recurrent_state_bytes"]
    precisions = list(r["weight_bytes_by_precision"])
    need = [(w + extra) * (1 + r["overhead_fraction"]) / 1e9 for w in r["weight_bytes_by_precision"].values()]
    fig, ax = plt.subplots(figsize=(11, 5))
    ax.bar(precisions, need, color="#4c72b0")
    for x, y in enumerate(need):
        ax.text(x, y, f"{y:,.0f}" if y >= 10 else f"{y:.2g}", ha="center", va="bottom", fontsize=8)
    seen: dict[int, list[str]] = {}
    for hw in devices:
        seen.setdefault(round(hw.usable_bytes / 1e9), []).append(hw.name)
    for gb, hw_names in sorted(seen.items()):
        ax.axhline(gb, color="#c44e52", linestyle="--", linewidth=0.8)
        # labels to the right of the axes: x in axes coordinates, y in GB
        ax.text(1.01, gb, " / ".join(hw_names) + f" ({gb} GB usable)", transform=ax.get_yaxis_transform(),
                va="center", ha="left", fontsize=7, color="#c44e52")
    ax.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_ylim(min(need + list(seen)) * 0.7, max(need + list(seen)) * 1.3)
    ax.set_ylabel("GB needed (weights + KV cache + state + overhead)")
    ax.set_title(f"{r['name']}: memory per precision at context {r['context']:,}, batch {r['batch']}",
                 fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=os.path.splitext(path)[1].lstrip(".").lower() or "png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
