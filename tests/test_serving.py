"""minimoe/inspect/serving.py: distinct experts against a simulation, the batched step and the
expert offload against sums done by hand, and the CLI flags."""
import numpy as np
import pytest

import minimoe
from minimoe.cli import main
from minimoe.inspect.estimate import EstimateError, estimate
from minimoe.inspect.hardware import HARDWARE, LINKS, HardwareError
from minimoe.inspect.serving import expected_distinct_experts


@pytest.mark.parametrize("E,K,B", [(8, 2, 1), (8, 2, 4), (64, 8, 16), (128, 4, 3)])
def test_distinct_experts_matches_a_simulation(E, K, B):
    rng = np.random.default_rng(0)
    trials = 4000
    picks = np.argsort(rng.random((trials, B, E)), axis=-1)[..., :K]          # K distinct of E, uniform
    distinct = np.array([len(np.unique(p)) for p in picks.reshape(trials, -1)])
    se = distinct.std() / np.sqrt(trials) + 1e-9
    assert abs(distinct.mean() - expected_distinct_experts(E, K, B)) < 5 * se + 1e-9
    assert expected_distinct_experts(E, K, 1) == pytest.approx(K)


def test_batch_1_step_is_the_batch_1_bytes_per_token():
    r = estimate("mixtral-8x7b", dtype="q4_0", batch=1, hardware="h100")
    assert r["batched_decode"]["step_bytes"] == r["bytes_per_token"]


def test_batched_step_by_hand_for_tiny_moe():
    cfg = minimoe.Config.preset("tiny-moe")                 # V 256, C 32, L 2, E 4, K 2, F 32
    B, ctx = 5, 64
    r = estimate(cfg, dtype="fp32", context=ctx, batch=B, hardware="h100")
    V, C, L, E, K, F = 256, 32, 2, 4, 2, 32
    experts = L * E * 3 * F * C * 4                          # every expert, fp32
    other = r["weight_bytes_per_token"] - experts * K // E   # batch-1 touched bytes minus K/E of experts
    distinct = E * (1 - (1 - K / E) ** B)
    want = other + (B - 1) * C * 4 + round(experts * distinct / E) + B * r["kv_bytes_per_token_read"]
    s = r["batched_decode"]
    assert s["step_bytes"] == want and s["distinct_experts_per_layer"] == pytest.approx(distinct)
    assert s["tokens_per_s_upper"]["H100 SXM 80 GB"] == pytest.approx(3350e9 * B / want)


def test_the_moe_advantage_shrinks_with_batch():
    per_token = [estimate("mixtral-8x7b", dtype="q4_0", batch=B, context=1024, hardware="h100")
                 ["batched_decode"]["weight_bytes"] for B in (1, 2, 8, 64)]
    total = estimate("mixtral-8x7b", dtype="q4_0", context=1024)["weight_bytes"]
    assert per_token == sorted(per_token) and per_token[0] < 0.35 * total < 0.99 * total < per_token[-1] <= total


def test_offload_gpt_oss_120b_on_a_24gb_card_and_64gb_of_ram():
    r = estimate("gpt-oss-120b", recipe="experts-mxfp4", hardware="rtx-4090", offload_experts=True,
                 host="ddr5-desktop", link="pcie4-x16")
    o = r["offload"]
    experts = r["weight_bytes_by_component"]["experts"]
    assert o["host_bytes"] == experts
    rest = r["weight_bytes"] - experts
    assert o["gpu_bytes"] == round((rest + r["kv_cache_bytes"] + r["recurrent_state_bytes"]) * 1.1)
    assert o["gpu_fits"] and o["host_fits"] and not r["hardware"][0]["fits"]
    s = r["batched_decode"]
    t = (s["step_bytes"] - s["expert_bytes"]) / 1008e9 + s["expert_bytes"] / 89.6e9
    assert o["tokens_per_s_upper_experts_on_cpu"] == pytest.approx(1 / t)
    assert o["tokens_per_s_upper_experts_over_link"] < o["tokens_per_s_upper_experts_on_cpu"]
    assert LINKS["pcie4-x16"] == 31.5


def test_offload_errors_name_what_is_missing():
    with pytest.raises(EstimateError, match="needs one GPU"):
        estimate("gpt-oss-120b", offload_experts=True)
    with pytest.raises(EstimateError, match="no routed experts"):
        estimate("tiny", offload_experts=True, hardware="h100")
    with pytest.raises(HardwareError, match="unknown link"):
        estimate("gpt-oss-120b", offload_experts=True, hardware="h100", link="usb")


def test_cli_batch_and_offload(capsys):
    assert main(["estimate", "mixtral-8x7b", "--dtype", "q4_0", "--batch", "32", "--hardware", "h100"]) == 0
    out = capsys.readouterr().out
    assert "distinct experts per MoE layer" in out and "8 (1 - (1 - 2/8)^32) = 8.00 of 8" in out
    assert main(["estimate", "gpt-oss-120b", "--recipe", "experts-mxfp4", "--offload-experts",
                 "--hardware", "rtx-4090", "--host", "ddr5-desktop"]) == 0
    out = capsys.readouterr().out
    assert "experts offloaded" in out and "with the experts computed on the CPU" in out
