"""Router collapse, and what fixes it, on a config small enough for CI (about 2 s per run).

tiny-moe with 4 experts, top-1, DeepSeek's sigmoid scores, no renormalisation (so the task loss
trains the router through the one gate weight), 150 steps at lr 3e-3 on the embedded corpus.
Without balancing, one expert ends up with more than 60% of the tokens (the first 20 steps already
send most tokens to one expert: the expert that gets tokens learns, so it gets more). With each
balancing method, no expert does. Tutorial 09 tells the same story with plots.

The numbers at seed 3 (max share of the top-1 assignments on val, even = 25%): none 82%, aux
loss 32%, aux + z 35%, loss-free bias 35%; expert choice is 25% by construction. Capacity is
no balancing method: the router still sends 67% of its choices to one expert, which *runs* at most
its capacity, and 44% of the tokens are dropped.
"""
import numpy as np
import pytest

from minimoe.train.loop import TrainConfig, Trainer

TINY = dict(n_experts=4, top_k=1, router="sigmoid_topk", router_renorm=False)
METHODS = {
    "aux": dict(aux_loss_coef=0.1),
    "aux+z": dict(aux_loss_coef=0.1, z_loss_coef=0.001),
    "loss-free bias": dict(bias_update_rate=0.01),
    "expert choice": dict(model={"router": "expert_choice", "router_renorm": False}),
}


def train(tmp_path, name, **settings):
    model = {**TINY, **settings.pop("model", {})}
    tc = TrainConfig(preset="tiny-moe", batch_size=8, block_size=32, eval_iters=8, sample_tokens=0,
                     max_iters=150, eval_interval=0, ckpt_interval=0, threads=1, lr=3e-3, warmup_iters=10,
                     seed=3, out=str(tmp_path / name), model=model,
                     **{"aux_loss_coef": 0.0, "z_loss_coef": 0.0, **settings})
    t = Trainer.new(tc, verbose=False)
    t.run()
    return t


def busiest(trainer) -> float:
    """The largest share of the val top-k assignments any expert has, over the MoE layers."""
    return max(max(l) for l in trainer.history[-1]["expert_load"] if l is not None)


@pytest.fixture(scope="module")
def collapsed(tmp_path_factory):
    return train(tmp_path_factory.mktemp("collapse"), "none")


def test_without_balancing_one_expert_takes_most_tokens(collapsed):
    assert busiest(collapsed) > 0.6


@pytest.mark.parametrize("method", list(METHODS))
def test_each_balancing_method_prevents_it(tmp_path, method, collapsed):
    t = train(tmp_path, method, **METHODS[method])
    assert busiest(t) < 0.6
    assert t.history[-1]["val_loss"] < collapsed.history[0]["val_loss"]      # and it still learns


def test_capacity_caps_what_an_expert_runs_and_drops_the_rest(tmp_path):
    """Capacity 1.0 (T*K/E = 8 rows per sequence): the router may still prefer one expert, but no
    expert runs more than a quarter of the assignments, and tokens are dropped instead."""
    t = train(tmp_path, "capacity", model={"capacity_factor": 1.0, "eval_capacity_factor": 1.0})
    x, _ = t.data.batch("val", 8, 32, np.random.default_rng(0))
    _, cache = t.model.forward(x)
    for st in cache["routing"]:
        if st is not None:
            ran = st["tokens_per_expert_kept"] / x.size                         # share of N*K, K = 1
            assert ran.max() <= 8 / 32 + 1e-9
            assert st["dropped_tokens"] > 0.1
