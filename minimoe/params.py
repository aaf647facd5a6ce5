"""Every parameter of a model, by name and shape, derived from its Config.

Shape legend: B batch, T time, C d_model, H heads, G kv heads, D head dim, F ffn width,
E experts, K top-k, V vocab.

`param_shapes(config)` is the one place that says which arrays a model has. The model
initialises from it, the loader checks a checkpoint against it, and the parameter counts
(`count_params`) and the estimator sum over it. A student can print it and see the model:

    embed.weight                       (V, C)      token embedding
    layers.{i}.attn_norm.weight        (C,)        RMSNorm before attention
    layers.{i}.attn.q.weight           (H*D, C)    query projection   (+ .bias with qkv_bias;
                                                   2*H*D rows with attn_output_gate: q and a gate)
    layers.{i}.attn.k.weight           (G*D, C)    key projection     (+ .bias)
    layers.{i}.attn.v.weight           (G*D, C)    value projection   (+ .bias)
    layers.{i}.attn.o.weight           (C, H*D)    output projection  (+ .bias with o_bias)
    layers.{i}.attn.q_norm.weight      (D,)|(H*D,) q RMSNorm (qk_norm "head" | "full")
    layers.{i}.attn.k_norm.weight      (D,)|(G*D,)
    layers.{i}.attn.sinks              (H,)        attention-sink logits (attn_sinks)
    layers.{i}.ffn_norm.weight         (C,)        RMSNorm before the FFN
  every norm with norm == "layernorm" (Phi-3.5-MoE) also has a .bias (C,)
  a dense layer:
    layers.{i}.ffn.gate.weight         (F, C)      SwiGLU: down(silu(gate x) * up x)
    layers.{i}.ffn.up.weight           (F, C)
    layers.{i}.ffn.down.weight         (C, F)
  an MoE layer:
    layers.{i}.moe.router.weight       (E, C)      router logits (+ .bias with router_bias)
    layers.{i}.moe.router.e_score_correction_bias (E,)  DeepSeek-V3's selection bias (a buffer:
                                                   not learned by gradient, not counted as a parameter)
    layers.{i}.moe.experts.gate        (E, F, C)   the E experts' SwiGLU weights, stacked
    layers.{i}.moe.experts.up          (E, F, C)
    layers.{i}.moe.experts.down        (E, C, F)
    layers.{i}.moe.experts.gate_bias   (E, F)      (expert_bias: also up_bias (E, F), down_bias (E, C))
    layers.{i}.moe.shared.gate.weight  (S*F, C)    S shared experts act as one FFN of width S*F
    layers.{i}.moe.shared.up.weight    (S*F, C)
    layers.{i}.moe.shared.down.weight  (C, S*F)
    layers.{i}.moe.shared_gate.weight  (1, C)      sigmoid gate on the shared output (Qwen2-MoE)
    norm.weight                        (C,)        final RMSNorm
    head.weight                        (V, C)      output head, absent with tie_embeddings
    head.bias                          (V,)        with head_bias (Phi-3.5-MoE)

A linear-attention layer (cfg.linear_layers; Qwen3-Next's Gated DeltaNet, estimator only) has, in
place of attn.*, with Hk key heads of Dk and Hv value heads of Dv (K_conv taps):
    layers.{i}.linear_attn.in_proj_qkvz.weight (2*Hk*Dk + 2*Hv*Dv, C)  q, k, v and the output gate z
    layers.{i}.linear_attn.in_proj_ba.weight   (2*Hv, C)    the write strength beta and the decay a
    layers.{i}.linear_attn.conv1d.weight       (2*Hk*Dk + Hv*Dv, K_conv)  causal depthwise conv of q, k, v
    layers.{i}.linear_attn.dt_bias             (Hv,)        decay: g = -exp(A_log) * softplus(a + dt_bias)
    layers.{i}.linear_attn.A_log               (Hv,)
    layers.{i}.linear_attn.norm.weight         (Dv,)        gated RMSNorm of each head's output
    layers.{i}.linear_attn.out_proj.weight     (C, Hv*Dv)

With attention == "mla" (DeepSeek-V2/V3, minimoe/nn/mla.py), in place of q, k, v, o above:
    layers.{i}.attn.q_a.weight (q_lora, C), attn.q_a_norm.weight (q_lora,),
    attn.q_b.weight (H*(nope+rope), q_lora)      [or attn.q.weight (H*(nope+rope), C) if q_lora_rank=0]
    attn.kv_a.weight (kv_lora+rope, C), attn.kv_a_norm.weight (kv_lora,),
    attn.kv_b.weight (H*(nope+v), kv_lora), attn.o.weight (C, H*v)

Multi-token prediction (cfg.n_mtp_layers; DeepSeek-V3, GLM-4.5): each MTP layer k, stored in the
checkpoint but not built by transformers' model, is counted by `mtp_shapes` (and by param_shapes
with with_mtp=True). It shares the embedding and the head with the model:
    mtp.{k}.enorm.weight (C,), mtp.{k}.hnorm.weight (C,)   RMSNorm of the next token's embedding
                                                          and of the model's last hidden state
    mtp.{k}.eh_proj.weight (C, 2*C)                       their concatenation, projected back to C
    mtp.{k}.layers.0.*                                    one more decoder layer (an MoE layer)
    mtp.{k}.norm.weight (C,)                              the norm before the shared head
"""
from __future__ import annotations

import numpy as np

from minimoe.config import Config

COMPONENTS = ("embedding", "attention", "router", "experts", "shared_experts", "ffn", "norms", "head",
              "mtp")   # mtp: every parameter of the multi-token-prediction layers


def is_buffer(name: str) -> bool:
    """Arrays a model holds that training does not learn by gradient (DeepSeek-V3's selection bias,
    which is adjusted by a load-balancing rule instead). They are not counted as parameters."""
    return name.endswith("e_score_correction_bias")


def param_shapes(cfg: Config, with_mtp: bool = False) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter, in model order (with_mtp: and the MTP layers last)."""
    C, V = cfg.d_model, cfg.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (V, C)}
    for i in range(cfg.n_layers):
        shapes.update(layer_shapes(cfg, f"layers.{i}.", linear=cfg.is_linear_layer(i),
                                   moe=cfg.is_moe_layer(i)))
    shapes.update(_norm_shapes(cfg, "norm"))
    if not cfg.tie_embeddings:
        shapes["head.weight"] = (V, C)
    if cfg.head_bias:
        shapes["head.bias"] = (V,)
    if with_mtp:
        shapes.update(mtp_shapes(cfg))
    return shapes


def layer_shapes(cfg: Config, p: str, linear: bool = False, moe: bool = True) -> dict[str, tuple[int, ...]]:
    """The parameters of one decoder layer, named under the prefix `p` ("layers.3.")."""
    C, H, G, D = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    shapes = _norm_shapes(cfg, p + "attn_norm")
    if linear:
        shapes.update(_linear_attention_shapes(cfg, p + "linear_attn."))
    elif cfg.attention == "mla":
        shapes.update(_mla_shapes(cfg, p + "attn."))
    else:
        Hq = 2 * H if cfg.attn_output_gate else H             # the gate rides on q's projection
        shapes[p + "attn.q.weight"] = (Hq * D, C)
        shapes[p + "attn.k.weight"] = (G * D, C)
        shapes[p + "attn.v.weight"] = (G * D, C)
        if cfg.qkv_bias:
            shapes[p + "attn.q.bias"] = (Hq * D,)
            shapes[p + "attn.k.bias"] = (G * D,)
            shapes[p + "attn.v.bias"] = (G * D,)
        shapes[p + "attn.o.weight"] = (C, H * D)
        if cfg.o_bias:
            shapes[p + "attn.o.bias"] = (C,)
        if cfg.qk_norm == "head":
            shapes[p + "attn.q_norm.weight"] = (D,)
            shapes[p + "attn.k_norm.weight"] = (D,)
        elif cfg.qk_norm == "full":
            shapes[p + "attn.q_norm.weight"] = (H * D,)
            shapes[p + "attn.k_norm.weight"] = (G * D,)
    if cfg.attn_sinks and not linear:
        shapes[p + "attn.sinks"] = (H,)
    shapes.update(_norm_shapes(cfg, p + "ffn_norm"))
    if moe and cfg.is_moe:
        E, F = cfg.n_experts, cfg.d_expert
        shapes[p + "moe.router.weight"] = (E, C)
        if cfg.router_bias:
            shapes[p + "moe.router.bias"] = (E,)
        if cfg.router_correction_bias:
            shapes[p + "moe.router.e_score_correction_bias"] = (E,)
        shapes[p + "moe.experts.gate"] = (E, F, C)
        shapes[p + "moe.experts.up"] = (E, F, C)
        shapes[p + "moe.experts.down"] = (E, C, F)
        if cfg.expert_bias:
            shapes[p + "moe.experts.gate_bias"] = (E, F)
            shapes[p + "moe.experts.up_bias"] = (E, F)
            shapes[p + "moe.experts.down_bias"] = (E, C)
        if cfg.n_shared_experts:
            Fs = cfg.n_shared_experts * cfg.d_shared_expert
            shapes[p + "moe.shared.gate.weight"] = (Fs, C)
            shapes[p + "moe.shared.up.weight"] = (Fs, C)
            shapes[p + "moe.shared.down.weight"] = (C, Fs)
            if cfg.shared_expert_gate:
                shapes[p + "moe.shared_gate.weight"] = (1, C)
    else:
        shapes[p + "ffn.gate.weight"] = (cfg.d_ff, C)
        shapes[p + "ffn.up.weight"] = (cfg.d_ff, C)
        shapes[p + "ffn.down.weight"] = (C, cfg.d_ff)
    return shapes


def mtp_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """The multi-token-prediction layers: what the checkpoint stores beyond the model, less the
    embedding and head they share with it. Each one's decoder layer is an MoE layer (in a dense
    model, a dense one) with the model's attention, as transformers' MtpModel builds it."""
    C, shapes = cfg.d_model, {}
    for k in range(cfg.n_mtp_layers):
        p = f"mtp.{k}."
        shapes.update(_norm_shapes(cfg, p + "enorm"))
        shapes.update(_norm_shapes(cfg, p + "hnorm"))
        shapes[p + "eh_proj.weight"] = (C, 2 * C)           # [enorm(embedding), hnorm(hidden)] -> C
        shapes.update(layer_shapes(cfg, p + "layers.0."))
        shapes.update(_norm_shapes(cfg, p + "norm"))
    return shapes


def _norm_shapes(cfg: Config, name: str) -> dict[str, tuple[int, ...]]:
    """An RMSNorm's scale (C,); a LayerNorm's scale and bias."""
    s = {name + ".weight": (cfg.d_model,)}
    if cfg.norm == "layernorm":
        s[name + ".bias"] = (cfg.d_model,)
    return s


def _linear_attention_shapes(cfg: Config, p: str) -> dict[str, tuple[int, ...]]:
    """Gated DeltaNet (Qwen3-Next), as transformers' Qwen3NextGatedDeltaNet holds it."""
    C, Hk, Hv = cfg.d_model, cfg.linear_num_key_heads, cfg.linear_num_value_heads
    Dk, Dv = cfg.linear_key_head_dim, cfg.linear_value_head_dim
    return {p + "in_proj_qkvz.weight": (2 * Hk * Dk + 2 * Hv * Dv, C),
            p + "in_proj_ba.weight": (2 * Hv, C),
            p + "conv1d.weight": (2 * Hk * Dk + Hv * Dv, cfg.linear_conv_kernel),
            p + "dt_bias": (Hv,),
            p + "A_log": (Hv,),
            p + "norm.weight": (Dv,),
            p + "out_proj.weight": (C, Hv * Dv)}


def _mla_shapes(cfg: Config, p: str) -> dict[str, tuple[int, ...]]:
    C, H = cfg.d_model, cfg.n_heads
    qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
    s: dict[str, tuple[int, ...]] = {}
    if cfg.q_lora_rank:
        s[p + "q_a.weight"] = (cfg.q_lora_rank, C)
        s[p + "q_a_norm.weight"] = (cfg.q_lora_rank,)
        s[p + "q_b.weight"] = (H * qk, cfg.q_lora_rank)
    else:
        s[p + "q.weight"] = (H * qk, C)
    s[p + "kv_a.weight"] = (cfg.kv_lora_rank + cfg.qk_rope_head_dim, C)
    s[p + "kv_a_norm.weight"] = (cfg.kv_lora_rank,)
    s[p + "kv_b.weight"] = (H * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank)
    s[p + "o.weight"] = (C, H * cfg.v_head_dim)
    if cfg.o_bias:
        s[p + "o.bias"] = (C,)
    return s


def component(name: str) -> str:
    """Which of COMPONENTS a parameter belongs to."""
    if name.startswith("mtp."):
        return "mtp"
    if name == "embed.weight":
        return "embedding"
    if name.startswith("head."):
        return "head"
    if name.endswith(("norm.weight", "norm.bias")) and "attn." not in name:
        return "norms"
    if ".moe.router." in name:
        return "router"
    if ".moe.experts." in name:
        return "experts"
    if ".moe.shared" in name:
        return "shared_experts"
    if ".attn." in name or ".linear_attn." in name:   # q/k norms, MLA's latent norms, DeltaNet's
        return "attention"                            # gated norm sit inside attention
    if ".ffn." in name:
        return "ffn"
    raise KeyError(f"no component for parameter {name!r}")


def role(name: str) -> str:
    """The component a parameter plays its part in: an MTP layer's experts are experts, and so on.
    ("mtp.0.layers.0.moe.experts.up" -> "experts"; its own projection and norms -> "mtp")."""
    if name.startswith("mtp.") and ".layers." in name:
        return component(name.split(".", 2)[2])
    return component(name)


def count_params(cfg: Config, with_mtp: bool = False) -> dict[str, int]:
    """Parameter counts of a config, exactly, without allocating any array.

    total                     every parameter (a tied embedding counted once)
    active                    the parameters one token touches: everything except the routed
                              experts, plus K/E of each MoE layer's routed-expert parameters
    embedding                 the token embedding table
    active_non_embedding      the parameters a token is multiplied by: active minus the embedding
                              table, which is looked up, not multiplied. A tied table is also the
                              output head, multiplied in full by every token, so it stays in.
                              2 * active_non_embedding is the matmul part of FLOPs per token.
    by_component              total per component (see COMPONENTS; "ffn" is the dense FFN)
    active_by_component       active per component
    mtp, mtp_active           the MTP layers' parameters (total and active), whether or not
                              with_mtp adds them to the counts above
    """
    by = {c: 0 for c in COMPONENTS}
    active_by = dict(by)
    for name, shape in param_shapes(cfg, with_mtp=True).items():
        if is_buffer(name):
            continue
        n = int(np.prod(shape))
        c = component(name)
        by[c] += n
        # Routed experts (an MTP layer's too): each token runs K of the E experts of its layer.
        active_by[c] += n * cfg.top_k // cfg.n_experts if role(name) == "experts" else n
    mtp, mtp_active = by["mtp"], active_by["mtp"]
    if not with_mtp:
        by["mtp"] = active_by["mtp"] = 0
    total, active = sum(by.values()), sum(active_by.values())
    return {"total": total, "active": active, "embedding": by["embedding"],
            "active_non_embedding": active - (0 if cfg.tie_embeddings else by["embedding"]),
            "by_component": by, "active_by_component": active_by, "mtp": mtp, "mtp_active": mtp_active}
