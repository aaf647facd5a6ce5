"""The model: a decoder-only transformer whose FFNs may be mixtures of experts.

Shape legend: B batch, T time, C d_model, V vocab, N = B*T tokens.

    x = embed[tokens]                                   (B, T, C)
    for each layer i:
        x = x + attention(rmsnorm(x))                   causal, grouped-query (or DeepSeek's latent
                                                        attention, nn/mla.py), RoPE, KV cache
        x = x + ffn_or_moe(rmsnorm(x))                  dense SwiGLU, or routed experts
    logits = rmsnorm(x) @ head.T                        (B, T, V)  (head = embed when tied)

`Model` holds a Config and one flat dict of named arrays (`model.params`), named as the
checkpoint names them (see minimoe/params.py). Every computation lives in the pure layer
functions of minimoe/nn/; this file only wires them together, forward and backward.
"""
from __future__ import annotations

import numpy as np

from minimoe.checks import check_int, check_sampling, check_seed
from minimoe.config import Config
from minimoe.errors import MinimoeError
from minimoe.inspect import tracing
from minimoe.kernels.backend import blas_threads
from minimoe.kernels.dispatch import inference as _inference
from minimoe.nn import attention, embedding, ffn, linear, mla, moe, norm, rope
from minimoe.nn.kv_cache import KVCache
from minimoe.nn.latent_kv_cache import LatentKVCache
from minimoe.params import count_params, param_shapes


def init_params(cfg: Config, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """Random parameters, GPT-2 style: N(0, 0.02) weights, the residual projections (attention
    output, FFN down) scaled by 1/sqrt(2 * n_layers), norms at 1, biases and sinks at 0."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(cfg).items():
        if name.endswith("norm.weight"):
            arr = np.ones(shape)
        elif name.endswith("bias") or name.endswith("sinks"):  # (and DeepSeek's selection bias)
            arr = np.zeros(shape)
        else:
            std = 0.02
            if name.endswith("o.weight") or name.endswith("down.weight") or name.endswith("experts.down"):
                std /= np.sqrt(2 * cfg.n_layers)
            arr = rng.normal(0.0, std, size=shape)
        params[name] = arr.astype(dtype)
    return params


def sub_params(params: dict, prefix: str) -> dict:
    """The arrays under `prefix`, with the prefix stripped: ("layers.0.attn.", ...) -> {"q.weight": ...}."""
    n = len(prefix)
    return {k[n:]: v for k, v in params.items() if k.startswith(prefix)}


class Model:
    """A minimoe model: `Model(config, seed=0)` for fresh weights, or `minimoe.load(dir)`."""

    def __init__(self, config: Config, seed: int = 0, dtype=np.float32, params: dict | None = None,
                 tokenizer=None):
        not_run = [s for s in config.estimator_only() if not s.startswith("n_mtp_layers")]  # (MTP: skipped)
        if not_run:
            raise MinimoeError(f"minimoe's model does not run {', '.join(not_run)} (the estimator counts "
                               f"it: `minimoe estimate`)")
        self.config = config
        self.params = init_params(config, seed, dtype) if params is None else params
        self.tokenizer = tokenizer
        self._rope_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        # each layer's parameter names, by the short names the nn/ layers use; the arrays
        # themselves are looked up in self.params at every call, so replacing one takes effect
        self._names = [self._layer_names(i) for i in range(config.n_layers)]

    # --- parameters ------------------------------------------------------------------------------
    def _layer_names(self, i: int) -> dict:
        p = f"layers.{i}."
        groups = {"attn": {}, "moe": {}, "ffn": {}}
        for name in self.params:
            if name.startswith(p):
                group, _, short = name[len(p):].partition(".")
                if group in groups:
                    groups[group][short] = name
        groups.update(attn_norm=p + "attn_norm.weight", ffn_norm=p + "ffn_norm.weight")
        return groups

    def layer_params(self, i: int) -> dict:
        """Layer i's arrays as the nn/ layers take them: {"attn": {"q.weight": ..., ...}, "moe":
        {...}, "ffn": {...}, "attn_norm": (C,), "ffn_norm": (C,)}, read from self.params now."""
        if not 0 <= i < self.config.n_layers:
            raise MinimoeError(f"layer must be in 0..{self.config.n_layers - 1}, found {i}")
        P = self.params
        return {group: (P[names] if isinstance(names, str) else {k: P[v] for k, v in names.items()})
                for group, names in self._names[i].items()}

    @property
    def dtype(self):
        return self.params["embed.weight"].dtype

    @property
    def head(self):
        return self.params["embed.weight"] if self.config.tie_embeddings else self.params["head.weight"]

    def param_counts(self) -> dict:
        """total, active (parameters one token touches), embedding, active_non_embedding, and
        both by component; see minimoe.params.count_params."""
        return count_params(self.config)

    # --- forward -----------------------------------------------------------------------------------
    def rotations(self, start: int, T: int):
        """RoPE's cos, sin (T, D) for positions start .. start+T-1, from a table grown on demand
        (D is config.rope_dim: the head dim, or MLA's rotary part)."""
        end = start + T
        if self._rope_cache is None or self._rope_cache[0] < end:
            grown = 2 * self._rope_cache[0] if self._rope_cache else 0   # doubling: a long decode
            n = max(end, self.config.max_seq_len, grown)                  # recomputes it rarely
            cos, sin = rope.cos_sin(np.arange(n), self.config.rope_dim, self.config.rope_theta,
                                    self.config.rope_scaling, dtype=self.dtype)
            self._rope_cache = (n, cos, sin)
        _, cos, sin = self._rope_cache
        return cos[start:end], sin[start:end]

    def check_tokens(self, tokens) -> np.ndarray:
        tokens = np.asarray(tokens)
        if tokens.ndim not in (1, 2) or tokens.size == 0:
            raise MinimoeError(f"tokens must be a non-empty (T,) or (B, T) integer array, "
                               f"found shape {tokens.shape}")
        if not np.issubdtype(tokens.dtype, np.integer):
            raise MinimoeError(f"tokens must be integers, found dtype {tokens.dtype}")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise MinimoeError(f"token ids must be in 0..{self.config.vocab_size - 1} (vocab_size), "
                               f"found {lo if lo < 0 else hi}")
        return tokens

    def __call__(self, tokens) -> np.ndarray:
        """Logits (B, T, V) for tokens (B, T), or (T, V) for tokens (T,)."""
        return self.forward(tokens, inference=True)[0]

    def forward(self, tokens, kv: KVCache | None = None, inference: bool = False, train: bool = False,
                noise: np.ndarray | None = None, last_only: bool = False):
        """tokens (B, T) or (T,) -> (logits (B, T, V) or (T, V), cache).

        The one forward pass: training, a prefill and a one-token decode step all run it. With
        `kv`, the tokens continue the cached sequence (positions kv.length ...), and the cache is
        extended. `cache` holds every layer's cache for `backward`, and cache["routing"][i] holds
        layer i's routing statistics (None for dense layers). With inference=True (implied by
        `kv`: there is no backward through a KV cache) no backward caches are kept, and the
        kernels may skip what only a backward needs.

        train=True routes as in training (see minimoe/nn/moe.py): the training capacity factor,
        and for noisy top-k the draws `noise` (n_layers, B, T, E) (moe.draw_noise; fresh ones from
        an unseeded generator if not given). Otherwise the evaluation settings apply.

        last_only=True (inference only) computes the logits of the last position alone, (B, 1, V):
        all that `generate` needs from a prompt, as llama.cpp and transformers' generate do
        (`logits_to_keep=1`). The head is the biggest matrix of a small model.
        """
        tokens = self.check_tokens(tokens)
        if last_only and not (kv is not None or inference):
            raise MinimoeError("Model.forward: last_only=True is for inference (with a KV cache or "
                               "inference=True); training needs every position's logits")
        if train and noise is None and self.config.router == "noisy_topk":
            B, T = (1, tokens.size) if tokens.ndim == 1 else tokens.shape
            noise = moe.draw_noise(self.config, B, T, np.random.default_rng(), self.dtype)
        mode = "generate" if kv is not None else "train" if train else "eval"
        # OpenBLAS on one thread: its threads spin while they wait, and when another program holds
        # a core a call waiting for them takes up to 100x its time. Large products are shared out
        # to minimoe's own threads instead (minimoe/kernels/qmatmul.py's float_matmul).
        with blas_threads(1):
            if kv is not None or inference:
                with _inference():
                    return self._forward(tokens, kv, keep=False, mode=mode, noise=noise, last_only=last_only)
            return self._forward(tokens, kv, keep=True, mode=mode, noise=noise)

    def _forward(self, tokens, kv: KVCache | None, keep: bool, mode: str = "eval", noise=None,
                 last_only: bool = False):
        cfg = self.config
        squeeze = tokens.ndim == 1
        if squeeze:
            tokens = tokens[None]                                  # (T,) -> (1, T)
        B, T = tokens.shape
        start = kv.length if kv is not None else 0
        cos, sin = self.rotations(start, T)                       # (T, D)
        latent = cfg.attention == "mla"                            # DeepSeek's attention (nn/mla.py)
        tr = tracing.ACTIVE                                        # None unless inside `with minimoe.trace()`
        if tr:
            tr.begin_forward(tokens, start, cached=kv is not None)  # ops below report as layers.{i}.*

        x, emb_cache = embedding.forward(tokens, self.params["embed.weight"])  # (B, T, C)
        layer_caches, routing = [], []
        for i in range(cfg.n_layers):
            lp = self.layer_params(i)
            if tr:
                tr.layer = i
            h, n1 = norm.forward(x, lp["attn_norm"], cfg.norm_eps, name="attn_norm")  # (B, T, C)
            if latent:                                             # decoding takes the absorbed form
                a, ac = mla.forward(h, lp["attn"], cfg, i, cos, sin, kv, absorb=kv is not None)
            else:
                a, ac = attention.forward(h, lp["attn"], cfg, i, cos, sin, kv)  # (B, T, C)
            x = x + a
            h, n2 = norm.forward(x, lp["ffn_norm"], cfg.norm_eps, name="ffn_norm")    # (B, T, C)
            if cfg.is_moe_layer(i):
                eps = None if noise is None else noise[i]                      # (B, T, E)
                f, fc, stats = moe.forward(h, lp["moe"], cfg, mode, eps)        # (B, T, C)
            else:
                p = lp["ffn"]
                f, fc = ffn.forward(h, p["gate.weight"], p["up.weight"], p["down.weight"],
                                    act=cfg.ffn_act, limit=cfg.swiglu_limit, alpha=cfg.swiglu_alpha)
                stats = None
            x = x + f
            if keep:
                layer_caches.append((n1, ac, n2, fc))
            routing.append(stats)
        if kv is not None:
            kv.advance(T)
        if tr:
            tr.layer = None
        if last_only:
            x = x[:, -1:]                                          # (B, T, C) -> (B, 1, C)
        h, nf = norm.forward(x, self.params["norm.weight"], cfg.norm_eps)     # (B, T, C)
        logits, head_cache = linear.forward(h, self.head, name="head")         # (B, T, C) -> (B, T, V)
        cache = dict(routing=routing, squeeze=squeeze)
        if keep:
            cache.update(embedding=emb_cache, layers=layer_caches, norm=nf, head=head_cache)
        return (logits[0] if squeeze else logits), cache

    # --- backward ----------------------------------------------------------------------------------
    def backward(self, dlogits: np.ndarray, cache, router_grads: dict | None = None) -> dict:
        """dlogits (B, T, V) -> gradients of every parameter, by name.

        router_grads: {layer: (dprobs (N, E) or None, dlogits (N, E) or None)}, extra gradients
        on each MoE layer's router from the auxiliary losses (see minimoe/train/losses.py).
        """
        cfg = self.config
        if cache["squeeze"]:
            dlogits = dlogits[None]
        grads: dict[str, np.ndarray] = {}
        dh, dhead, _ = linear.backward(dlogits, cache["head"])
        dx, grads["norm.weight"] = norm.backward(dh, cache["norm"])
        for i in reversed(range(cfg.n_layers)):
            n1, ac, n2, fc = cache["layers"][i]
            p = f"layers.{i}."
            # x = x + f(norm(x))
            if cfg.is_moe_layer(i):
                extra = (router_grads or {}).get(i, (None, None))
                dh, g = moe.backward(dx, fc, *extra)
                grads.update({p + "moe." + k: v for k, v in g.items()})
            else:
                dh, g = ffn.backward(dx, fc)
                grads.update({p + f"ffn.{k}.weight": v for k, v in g.items()})
            dn, grads[p + "ffn_norm.weight"] = norm.backward(dh, n2)
            dx = dx + dn
            # x = x + attention(norm(x))
            dh, g = (mla if cfg.attention == "mla" else attention).backward(dx, ac)
            grads.update({p + "attn." + k: v for k, v in g.items()})
            dn, grads[p + "attn_norm.weight"] = norm.backward(dh, n1)
            dx = dx + dn
        grads["embed.weight"] = embedding.backward(dx, cache["embedding"])
        if cfg.tie_embeddings:
            grads["embed.weight"] += dhead
        else:
            grads["head.weight"] = dhead
        for name, arr in self.params.items():       # experts that got no token have zero gradient
            if name not in grads:
                grads[name] = np.zeros_like(arr)
            elif grads[name].shape != arr.shape:  # an expert array only partly filled
                raise AssertionError(f"gradient of {name} has shape {grads[name].shape}, "
                                     f"expected {arr.shape}")
        return grads

    # --- generation --------------------------------------------------------------------------------
    def new_kv_cache(self, batch: int, max_len: int | None = None) -> KVCache | LatentKVCache:
        cfg = self.config
        if cfg.attention == "mla":                                 # latents, not keys and values
            return LatentKVCache.empty(cfg.n_layers, batch, max_len or cfg.max_seq_len,
                                       cfg.kv_lora_rank, cfg.qk_rope_head_dim, self.dtype)
        return KVCache.empty(cfg.n_layers, batch, cfg.n_kv_heads, max_len or cfg.max_seq_len,
                             cfg.head_dim, self.dtype)

    def generate(self, prompt, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None) -> np.ndarray:
        """The prompt followed by `max_new_tokens` new tokens, decoded with a KV cache.

        temperature 0 is greedy decoding. top_k keeps the k most likely tokens, top_p the smallest
        set whose probability reaches p. Once the sequence is longer than max_seq_len, the model sees
        only its last max_seq_len tokens (as nanoGPT crops its context), re-reading them each step.
        """
        prompt = self.check_tokens(prompt)
        squeeze = prompt.ndim == 1
        seq = prompt[None] if squeeze else prompt                     # (B, T)
        check_int("max_new_tokens", max_new_tokens, lo=0)
        check_sampling(temperature, top_k, top_p)
        check_seed(seed)
        rng = np.random.default_rng(seed)
        L = self.config.max_seq_len
        kv = self.new_kv_cache(seq.shape[0], L)
        logits, _ = self.forward(seq[:, -L:], kv, last_only=True)    # (B, 1, V): the prompt's last
        out = [seq]
        for step in range(max_new_tokens):
            nxt = sample(logits[:, -1], temperature, top_k, top_p, rng)  # (B,)
            out.append(nxt[:, None])
            if step == max_new_tokens - 1:
                break
            if kv.length == L:                                         # context full: crop and re-read
                kv = self.new_kv_cache(seq.shape[0], L)
                window = np.concatenate(out, axis=1)[:, -L:]
                logits, _ = self.forward(window, kv, last_only=True)
            else:
                logits, _ = self.forward(nxt[:, None], kv)             # one position: (B, 1, V)
        tokens = np.concatenate(out, axis=1)
        return tokens[0] if squeeze else tokens

    # --- checkpoints -------------------------------------------------------------------------------
    def save(self, folder: str) -> None:
        """Write config.json, model.safetensors (and tokenizer.json) into `folder`, atomically."""
        from minimoe.io.checkpoint import save
        save(self, folder)

    def save_hf(self, folder: str, family: str | None = None) -> str:
        """Write a Hugging Face folder transformers loads (minimoe/io/hf_export.py); returns the family."""
        from minimoe.io.hf_export import save_hf
        return save_hf(self, folder, family)

    def save_gguf(self, path: str, recipe: str = "f32") -> str:
        """Write a llama.cpp GGUF file; recipe f32 | q8_0 | q4_0 | mxfp4 (minimoe/io/gguf_file.py)."""
        from minimoe.io.gguf_file import save_gguf
        return save_gguf(self, path, recipe)

    def __repr__(self) -> str:
        c = self.param_counts()
        return (f"Model({self.config.name or 'custom'}: {self.config.n_layers} layers, d_model "
                f"{self.config.d_model}, {self.config.n_experts} experts top-{self.config.top_k}, "
                f"{c['total']:,} params, {c['active']:,} active)")


def sample(logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None,
           rng: np.random.Generator) -> np.ndarray:
    """logits (B, V) -> next tokens (B,)."""
    check_sampling(temperature, top_k, top_p)
    if not np.isfinite(logits).all():
        raise MinimoeError("the model's logits hold NaN or inf, so no token can be chosen; its weights "
                           "or its input are probably corrupt")
    with np.errstate(over="ignore"):
        z = logits.astype(np.float64) / temperature if temperature else None  # (B, V)
    if z is None or not np.isfinite(z).all():                        # 0, or so small that z overflows:
        return logits.argmax(axis=-1)                                # the limit is greedy decoding
    if top_k is not None:
        kth = np.sort(z, axis=-1)[:, -min(top_k, z.shape[-1])][:, None]
        z = np.where(z < kth, -np.inf, z)
    probs = np.exp(z - z.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None:
        order = np.argsort(-probs, axis=-1)
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        keep_sorted = np.cumsum(sorted_p, axis=-1) - sorted_p < top_p  # always keeps the first
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    return np.array([rng.choice(len(p), p=p) for p in probs])
