"""Exercise: the estimator by hand.   Grade: minimoe grade estimate_by_hand.py

Given a minimoe.Config (fields: vocab_size V, d_model C, n_layers L, n_heads H, n_kv_heads G,
head_dim D, n_experts E, top_k K, d_expert F, tie_embeddings, ...; no biases here), compute, for
bf16 weights (2 bytes each) and a bf16 KV cache, batch 1:

    total_params      embedding V*C + per layer [attention norm C, q H*D*C, k and v G*D*C each,
                      o C*H*D, MoE norm C, router E*C, E experts of 3*F*C] + final norm C + head V*C
    active_params     the same with K of the E experts per layer
    kv_cache_bytes    for `context` tokens: L layers * 2 (k and v) * G * D * context * 2 bytes
    bytes_per_token   what one decoded token reads at that context: the active weights, except
                      that of the embedding table only the token's one row (C values) is read, in
                      bytes, plus the whole KV cache

Return a dict with those four keys. Graded exactly against minimoe.inspect.estimate for the
tiny-moe (context 64) and mixtral-mini (context 1024) presets. docs/estimator.md has every
formula, if you get stuck.
"""
EXERCISE = "estimate_by_hand"


def estimate_by_hand(cfg, context: int) -> dict:
    """cfg (minimoe.Config), context -> {"total_params", "active_params", "kv_cache_bytes",
    "bytes_per_token"} as integers."""
    raise NotImplementedError("count the parameters and bytes by hand")
