"""The auxiliary router losses against independent oracles: a line-by-line NumPy transcription
of transformers' `load_balancing_loss_func` (MixtralForCausalLM), and the definitions written
as plain loops."""
import numpy as np
import pytest

from minimoe.train import losses


def hf_load_balancing_loss_func(gate_logits, num_experts, top_k):
    """transformers/models/mixtral/modeling_mixtral.py, load_balancing_loss_func, with no
    attention mask, torch replaced by NumPy line for line."""
    concatenated_gate_logits = np.concatenate(gate_logits, axis=0)
    z = concatenated_gate_logits - concatenated_gate_logits.max(-1, keepdims=True)
    routing_weights = np.exp(z) / np.exp(z).sum(-1, keepdims=True)        # softmax
    selected_experts = np.argsort(-routing_weights, axis=-1, kind="stable")[:, :top_k]  # topk
    expert_mask = np.eye(num_experts)[selected_experts]                    # one_hot: (L*N, K, E)
    tokens_per_expert = np.mean(expert_mask, axis=0)                       # (K, E)
    router_prob_per_expert = np.mean(routing_weights, axis=0)              # (E,)
    overall_loss = np.sum(tokens_per_expert * router_prob_per_expert[None, :])
    return overall_loss * num_experts


def fake_routing(n_layers, N, E, K, seed=0, dense=()):
    """Router stats as Model.forward reports them, from random logits (softmax routing)."""
    rng = np.random.default_rng(seed)
    routing = []
    for i in range(n_layers):
        if i in dense:
            routing.append(None)
            continue
        logits = rng.normal(size=(N, E)) * 2
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        experts = np.argsort(-probs, axis=-1, kind="stable")[:, :K]
        routing.append({"logits": logits, "probs": probs, "experts": experts})
    return routing


@pytest.mark.parametrize("K", [1, 2, 4])
def test_hf_form_matches_transformers(K):
    routing = fake_routing(3, 20, 6, K, dense=(1,))
    ours, _ = losses.load_balancing_loss(routing, form="hf")
    ref = hf_load_balancing_loss_func([s["logits"] for s in routing if s is not None], 6, K)
    assert ours == pytest.approx(ref, rel=1e-12)


def test_layers_form_is_a_sum_of_per_layer_losses():
    routing = fake_routing(3, 20, 6, 2, seed=1)
    ours, _ = losses.load_balancing_loss(routing, form="layers")
    per_layer = [hf_load_balancing_loss_func([s["logits"]], 6, 2) for s in routing]
    assert ours == pytest.approx(sum(per_layer), rel=1e-12)
    one = fake_routing(1, 20, 6, 2, seed=1)                 # one MoE layer: the two forms agree
    assert losses.load_balancing_loss(one, form="layers")[0] == pytest.approx(
        losses.load_balancing_loss(one, form="hf")[0], rel=1e-12)


def test_balanced_routing_gives_K():
    """Every expert gets the same share of tokens and of probability: the loss is exactly K."""
    N, E, K = 8, 4, 2
    probs = np.full((N, E), 1 / E)
    experts = np.array([[(2 * n) % E, (2 * n + 1) % E] for n in range(N)])
    routing = [{"probs": probs, "experts": experts, "logits": np.zeros((N, E))}]
    assert losses.load_balancing_loss(routing)[0] == pytest.approx(K)


def test_z_loss_definition():
    routing = fake_routing(2, 10, 5, 2, seed=2)
    ours, grads = losses.z_loss(routing, coef=1.0)
    ref = 0.0
    for s in routing:
        ref += np.mean([np.log(np.sum(np.exp(row))) ** 2 for row in s["logits"]])
    assert ours == pytest.approx(ref, rel=1e-12)
    assert set(grads) == {0, 1} and grads[0].shape == (10, 5)


def test_dense_model_has_no_router_loss():
    assert losses.load_balancing_loss([None, None]) == (0.0, {})
    assert losses.z_loss([None]) == (0.0, {})
    assert losses.combine({}, {}) == {}
