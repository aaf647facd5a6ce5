"""Serving arithmetic: how many distinct experts a batch touches, the bytes of a batched decode
step, and experts kept in CPU memory while the rest sits on a GPU.

Shape legend: B sequences decoded together (one new token each per step), E experts, K top-k.

Distinct experts. If each of B tokens picks K of E experts uniformly and independently, an
expert is missed by one token with probability 1 - K/E, by all B with (1 - K/E)^B, so

    expected distinct experts per MoE layer  = E * (1 - (1 - K/E)^B)

which is K at B = 1 and tends to E: a batch of 32 tokens of Mixtral (E 8, K 2) reads 7.99 of the 8
experts. Real routers are not uniform (tutorials/13_serving_and_batches.py measures it); skewed
routing touches fewer experts than the formula says.

A batched decode step reads every non-expert weight once for the whole batch, the distinct
experts' weights once, B rows of the embedding table, and each sequence's own KV cache:

    step_bytes = non-expert touched bytes + (B - 1) * embedding row
                 + expert bytes * (1 - (1 - K/E)^B)  + B * KV bytes read per sequence
    tokens/s  <= bandwidth * B / step_bytes

So the MoE's advantage (it reads K/E of its experts per token) shrinks as B grows: at large B it
reads nearly all of them every step, like a dense model of its total size.

Expert offload (llama.cpp's --n-cpu-moe / -ot exps=CPU): the routed experts stay in host RAM and
everything else (attention, norms, router, shared experts, embedding, head, KV cache) on the GPU.
Two ways to run the experts, both bounded by bandwidth:

    experts on the CPU    time per step = GPU bytes / GPU bandwidth + expert bytes / RAM bandwidth
    experts over PCIe     time per step = GPU bytes / GPU bandwidth + expert bytes / link bandwidth
                          (each step copies the experts it needs to the GPU)

The first is what llama.cpp does; the second shows why it does: PCIe moves bytes slower than the
host's own memory. docs/estimator.md works the gpt-oss-120b example.
"""
from __future__ import annotations

from minimoe.config import Config
from minimoe.inspect.hardware import Hardware
from minimoe.params import role


def expected_distinct_experts(E: int, K: int, B: int) -> float:
    """E * (1 - (1 - K/E)^B): experts touched by B tokens choosing K of E uniformly (per layer)."""
    return E * (1.0 - (1.0 - K / E) ** B)


def split_touched(cfg: Config, plan: dict, touched) -> dict:
    """The bytes a one-token decode reads, split: {"experts": all routed experts' bytes (E of E),
    "experts_touched": their K/E share, "other": every non-expert touched byte, "embedding_row":
    one row of an untied table}. `touched(cfg, name, entry)` is the estimator's touched_bytes."""
    out = {"experts": 0, "experts_touched": 0, "other": 0, "embedding_row": 0}
    for name, entry in plan.items():
        if role(name) == "experts":
            out["experts"] += entry["bytes"]
            out["experts_touched"] += touched(cfg, name, entry)
        else:
            t = touched(cfg, name, entry)
            out["other"] += t
            if name == "embed.weight" and not cfg.tie_embeddings:
                out["embedding_row"] = t
    return out


def batched_step(cfg: Config, parts: dict, B: int, kv_read: int, state_traffic: int = 0) -> dict:
    """Bytes of one decode step of B sequences, from `split_touched` parts and the KV bytes one
    sequence reads. Exactly the batch-1 bytes per token at B = 1."""
    E, K = cfg.n_experts, cfg.top_k
    if E:
        distinct = expected_distinct_experts(E, K, B)
        expert_bytes = parts["experts_touched"] if B == 1 else round(parts["experts"] * distinct / E)
    else:
        distinct, expert_bytes = 0.0, 0
    weights = parts["other"] + (B - 1) * parts["embedding_row"] + expert_bytes
    step = weights + B * (kv_read + state_traffic)
    return {"batch": B, "distinct_experts_per_layer": distinct, "expert_bytes": expert_bytes,
            "weight_bytes": weights, "kv_bytes": B * kv_read, "state_bytes": B * state_traffic,
            "step_bytes": step, "bytes_per_token": step / B}


def offload_experts(plan: dict, parts: dict, step: dict, kv_cache: int, state: int, overhead: float,
                    gpu: Hardware, host: Hardware, link_gbs: float) -> dict:
    """Routed experts in host RAM, the rest on the GPU: what each side holds, whether it fits, and
    the decode bound of a step (experts run on the CPU, or copied over the link each step)."""
    expert_bytes = parts["experts"]
    gpu_weights = sum(e["bytes"] for n, e in plan.items() if role(n) != "experts")
    gpu_need = round((gpu_weights + kv_cache + state) * (1 + overhead))
    host_need = expert_bytes
    gpu_step = step["step_bytes"] - step["expert_bytes"]            # bytes the GPU reads per step
    t_gpu = gpu_step / (gpu.bandwidth_gbs * 1e9)
    t_cpu = step["expert_bytes"] / (host.bandwidth_gbs * 1e9)
    t_link = step["expert_bytes"] / (link_gbs * 1e9)
    B = step["batch"]
    return {"gpu": gpu.name, "host": host.name, "link_gbs": link_gbs,
            "gpu_bytes": gpu_need, "gpu_fits": gpu_need <= gpu.usable_bytes,
            "gpu_usable_bytes": gpu.usable_bytes,
            "host_bytes": host_need, "host_fits": host_need <= host.usable_bytes,
            "host_usable_bytes": host.usable_bytes,
            "gpu_bytes_per_step": gpu_step, "expert_bytes_per_step": step["expert_bytes"],
            "tokens_per_s_upper_experts_on_cpu": B / (t_gpu + t_cpu),
            "tokens_per_s_upper_experts_over_link": B / (t_gpu + t_link)}
