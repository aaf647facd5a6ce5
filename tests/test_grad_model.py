"""Finite-difference checks (float64, relative error < 1e-6) of the whole model's backward pass:
every parameter's gradient of cross-entropy + coef_aux * load-balancing + coef_z * z-loss.

Covers dense and MoE models; top-1, top-2 and top-k = E; the three router rules; both
load-balancing forms; tied and untied embeddings; the attention extras (GQA, biases, sinks,
sliding windows, q/k norms); and DeepSeek's latent attention with group-limited routing.
"""
import numpy as np
import pytest

from minimoe.config import Config
from minimoe.model import Model
from minimoe.nn import loss as ce
from minimoe.train import losses
from minimoe.train.gradcheck import assert_gradients

BASE = dict(vocab_size=13, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=12, max_seq_len=16)

CASES = {
    "dense-tied": dict(tie_embeddings=True),
    "moe-top1": dict(n_experts=4, top_k=1, d_expert=8),
    "moe-top1-no-renorm": dict(n_experts=4, top_k=1, d_expert=8, router_renorm=False),
    "moe-top2": dict(n_experts=4, top_k=2, d_expert=8, tie_embeddings=True),
    "moe-topE": dict(n_experts=4, top_k=4, d_expert=8),
    "moe-topk_softmax": dict(n_experts=4, top_k=2, d_expert=8, router="topk_softmax", router_bias=True),
    "moe-sigmoid": dict(n_experts=4, top_k=2, d_expert=8, router="sigmoid_topk", router_scale=2.0),
    "moe-dense-first-shared": dict(n_experts=4, top_k=2, d_expert=8, dense_layers=[0], n_shared_experts=1,
                                   shared_expert_gate=True),
    "gpt-oss-like": dict(n_experts=4, top_k=2, d_expert=8, router="topk_softmax", router_bias=True,
                         expert_bias=True, qkv_bias=True, o_bias=True, attn_sinks=True, sliding_window=3,
                         sliding_layers=[0], ffn_act="swiglu_oai", swiglu_limit=7.0),
    "qk-norm-head": dict(n_experts=4, top_k=2, d_expert=8, qk_norm="head"),
    "qk-norm-full": dict(qk_norm="full"),
    "deepseek-v3-like": dict(n_kv_heads=4, head_dim=6, attention="mla", q_lora_rank=8, kv_lora_rank=6,
                             qk_rope_head_dim=2, qk_nope_head_dim=4, v_head_dim=5, rope_interleave=True,
                             n_experts=8, top_k=2, d_expert=8, dense_layers=[0], n_shared_experts=1,
                             router="sigmoid_topk", router_scale=2.5, router_groups=4, router_topk_groups=2,
                             router_correction_bias=True),
    "deepseek-v2-like": dict(n_kv_heads=4, head_dim=6, attention="mla", kv_lora_rank=6, qk_rope_head_dim=2,
                             qk_nope_head_dim=4, v_head_dim=5, rope_interleave=True, n_experts=8, top_k=3,
                             d_expert=8, n_shared_experts=2, router_renorm=False, router_scale=4.0,
                             router_groups=4, router_topk_groups=3),
}


def perturbed_model(cfg, seed=0):
    """A float64 model whose every parameter is random and O(0.1-1), so each one matters."""
    model = Model(cfg, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 100)
    for name, arr in model.params.items():
        arr += rng.normal(0.0, 0.2 if arr.ndim > 1 else 0.5, size=arr.shape)   # in place: views stay valid
    return model


def routing_margin(cache, K):
    """The smallest gap, over tokens and MoE layers, between the K-th and (K+1)-th router logit.
    A finite difference is only meaningful if no perturbation closes it."""
    gaps = [np.inf]
    for s in cache["routing"]:
        if s is not None and K < s["logits"].shape[1]:
            srt = -np.sort(-s["logits"], axis=-1)                     # (N, E) descending
            gaps.append(float((srt[:, K - 1] - srt[:, K]).min()))
    return min(gaps)


def model_with_margin(cfg, tokens, min_gap=0.01):
    """The first of a few seeded models whose routing is far from any tie on these tokens."""
    for seed in range(10):
        model = perturbed_model(cfg, seed)
        if not cfg.is_moe or routing_margin(model.forward(tokens)[1], cfg.top_k) > min_gap:
            return model
    raise AssertionError("no seed gave a routing margin; use other tokens")


def total_loss(model, tokens, targets, aux_coef, z_coef, form="layers"):
    """(loss, forward cache, router grads) of CE + aux_coef * aux + z_coef * z."""
    logits, cache = model.forward(tokens)
    L, ce_cache = ce.forward(logits, targets)
    aux, daux = losses.load_balancing_loss(cache["routing"], aux_coef, form)
    z, dz = losses.z_loss(cache["routing"], z_coef)
    return L + aux_coef * aux + z_coef * z, cache, ce_cache, losses.combine(daux, dz)


@pytest.mark.parametrize("name", list(CASES))
def test_model_gradients(name):
    cfg = Config(**{**BASE, **CASES[name]})
    rng = np.random.default_rng(1)
    data = rng.integers(0, cfg.vocab_size, size=(2, 8))
    tokens, targets = data[:, :-1], data[:, 1:]
    model = model_with_margin(cfg, tokens)
    aux_coef, z_coef = (0.3, 0.1) if cfg.is_moe else (0.0, 0.0)

    _, cache, ce_cache, router_grads = total_loss(model, tokens, targets, aux_coef, z_coef)
    chosen = lambda c: [None if s is None else np.sort(s["experts"], axis=-1) for s in c["routing"]]
    experts0 = chosen(cache)
    grads = model.backward(ce.backward(1.0, ce_cache), cache, router_grads)
    assert set(grads) == set(model.params)

    def f():
        L, c, _, _ = total_loss(model, tokens, targets, aux_coef, z_coef)
        for e, e0 in zip(chosen(c), experts0):        # the same K experts (in any order)
            assert e is None or np.array_equal(e, e0), "a perturbation changed the routing"
        return L

    assert_gradients(f, model.params, grads)


@pytest.mark.parametrize("form", ["layers", "hf"])
@pytest.mark.parametrize("which", ["aux", "z"])
def test_router_loss_gradients_alone(form, which):
    """The auxiliary losses on their own (no cross-entropy), so their gradients are not
    hidden under the much larger task gradient."""
    cfg = Config(**{**BASE, "n_experts": 4, "top_k": 2, "d_expert": 8})
    tokens = np.random.default_rng(2).integers(0, cfg.vocab_size, size=(2, 7))
    model = model_with_margin(cfg, tokens)
    a, z = (1.0, 0.0) if which == "aux" else (0.0, 1.0)

    def parts():
        logits, cache = model.forward(tokens)
        aux, daux = losses.load_balancing_loss(cache["routing"], a, form)
        zl, dz = losses.z_loss(cache["routing"], z)
        return a * aux + z * zl, logits, cache, losses.combine(daux if a else None, dz if z else None)

    L, logits, cache, router_grads = parts()
    grads = model.backward(np.zeros_like(logits), cache, router_grads)
    router_names = [n for n in model.params if ".moe.router." in n]
    # the routers get a gradient; the last layer's experts, which feed no router, get none
    assert all(np.abs(grads[n]).sum() > 0 for n in router_names)
    last = f"layers.{cfg.n_layers - 1}.moe.experts."
    assert all(not np.any(grads[n]) for n in model.params if n.startswith(last))
    assert np.abs(grads["layers.0.moe.experts.up"]).sum() > 0  # layer 0's experts feed layer 1's router
    assert_gradients(lambda: parts()[0], model.params, grads)
