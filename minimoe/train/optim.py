"""AdamW, gradient clipping by global norm, and the learning-rate schedule.

Every parameter p with gradient g (all arrays of the model's flat dict, by name):

    AdamW (Loshchilov & Hutter, 2019), written as torch.optim.AdamW computes it:
        p <- p - lr * wd * p                          decoupled weight decay (only where `decay`)
        m <- b1 m + (1 - b1) g                        first moment
        v <- b2 v + (1 - b2) g^2                      second moment
        p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)   bias-corrected step

    Clipping: if ||g||_2 over every parameter > max_norm, scale all g by max_norm / (||g|| + 1e-6).

    Schedule (nanoGPT's get_lr): linear warmup for `warmup_iters`, then a cosine from `lr` down to
    `min_lr` at `decay_iters`, then flat at `min_lr`.

Parameters are updated in place, so the Model's per-layer views of `model.params` stay valid.
"""
from __future__ import annotations

import math

import numpy as np


def lr_at(step: int, lr: float, min_lr: float, warmup_iters: int, decay_iters: int) -> float:
    """The learning rate of iteration `step` (0-based), exactly as nanoGPT's get_lr."""
    if step < warmup_iters:
        return lr * (step + 1) / (warmup_iters + 1)
    if step > decay_iters:
        return min_lr
    ratio = (step - warmup_iters) / max(1, decay_iters - warmup_iters)   # 0 -> 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))                      # 1 -> 0
    return min_lr + coeff * (lr - min_lr)


def global_norm(grads: dict) -> float:
    """sqrt(sum of g^2 over every gradient), accumulated in float64."""
    return math.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in grads.values()))


def clip_by_global_norm(grads: dict, max_norm: float) -> float:
    """Scale every gradient in place so that the global norm is at most max_norm (if max_norm > 0).
    Returns the norm before clipping."""
    norm = global_norm(grads)
    if max_norm > 0 and math.isfinite(norm) and norm > max_norm:   # inf/nan: left for the NaN guard
        scale = np.float32(max_norm / (norm + 1e-6))
        for g in grads.values():
            g *= scale.astype(g.dtype)
    return norm


def decays(name: str, shape: tuple, decay_embeddings: bool = False, decay_norms: bool = False) -> bool:
    """Whether weight decay applies to a parameter: matrices (projections, experts, router, an
    untied head) decay; norms, biases, attention sinks and the token embedding do not, unless
    configured."""
    if name == "embed.weight":
        return decay_embeddings
    if name.endswith("norm.weight"):
        return decay_norms
    if name.endswith("bias") or name.endswith("sinks"):
        return False
    return len(shape) >= 2


class AdamW:
    """AdamW over a flat dict of named float arrays.

        opt = AdamW(model.params, weight_decay=0.1)
        opt.step(grads, lr)            # updates model.params in place
        opt.m["layers.0.attn.q.weight"] # the first moment, same shape as the parameter
    """

    def __init__(self, params: dict, betas=(0.9, 0.99), eps: float = 1e-8, weight_decay: float = 0.1,
                 decay_embeddings: bool = False, decay_norms: bool = False):
        self.params = params
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps, self.weight_decay = float(eps), float(weight_decay)
        self.decay = {n: decays(n, p.shape, decay_embeddings, decay_norms) for n, p in params.items()}
        self.m = {n: np.zeros_like(p) for n, p in params.items()}
        self.v = {n: np.zeros_like(p) for n, p in params.items()}
        self.t = 0                                       # steps taken

    def step(self, grads: dict, lr: float) -> None:
        """One update of every parameter, in place."""
        self.t += 1
        step_size = lr / (1 - self.beta1 ** self.t)      # lr / (1 - b1^t): m's bias correction
        inv_sqrt_bc2 = 1 / math.sqrt(1 - self.beta2 ** self.t)  # 1 / sqrt(1 - b2^t): v's
        scratch = self._scratch()
        for name, p in self.params.items():
            decay = 1 - lr * self.weight_decay if self.decay[name] and self.weight_decay else None
            g, m, v = grads[name].reshape(-1), self.m[name].reshape(-1), self.v[name].reshape(-1)
            flat = p.reshape(-1)                                    # views: updates land in p
            # a few thousand entries at a time, so the ~12 passes below run in cache
            for a in range(0, flat.size, self.CHUNK):
                sl = slice(a, a + self.CHUNK)
                self._update(flat[sl], g[sl], m[sl], v[sl], step_size, inv_sqrt_bc2, decay,
                             scratch[:flat[sl].size])

    CHUNK = 1 << 15

    def _update(self, p, g, m, v, step_size, inv_sqrt_bc2, decay, tmp):
        """The AdamW update of one flat slice (p, g, m, v of equal length), in place; `tmp` is
        scratch space of the same length."""
        dt = p.dtype.type
        b1, b2 = self.beta1, self.beta2
        if decay is not None:
            p *= dt(decay)                                          # p <- p - lr wd p
        np.multiply(g, dt(1 - b1), out=tmp)
        m *= dt(b1)
        m += tmp                                                    # m <- b1 m + (1 - b1) g
        np.multiply(g, g, out=tmp)
        tmp *= dt(1 - b2)
        v *= dt(b2)
        v += tmp                                                    # v <- b2 v + (1 - b2) g^2
        np.sqrt(v, out=tmp)
        tmp *= dt(inv_sqrt_bc2)
        tmp += dt(self.eps)                                         # sqrt(v_hat) + eps
        np.divide(m, tmp, out=tmp)
        tmp *= dt(step_size)
        p -= tmp                                                    # p <- p - lr m_hat / (sqrt(v_hat) + eps)

    def _scratch(self) -> np.ndarray:
        dtype = next(iter(self.params.values())).dtype
        if getattr(self, "_buf", None) is None or self._buf.dtype != dtype:
            self._buf = np.empty(self.CHUNK, dtype)
        return self._buf

    # --- saving and restoring (safetensors tensors + a JSON-able dict) -----------------------------
    def state_tensors(self) -> dict[str, np.ndarray]:
        """{"m.<param name>": m, "v.<param name>": v} for every parameter."""
        out = {f"m.{n}": a for n, a in self.m.items()}
        out.update({f"v.{n}": a for n, a in self.v.items()})
        return out

    def state_info(self) -> dict:
        return {"t": self.t, "betas": [self.beta1, self.beta2], "eps": self.eps,
                "weight_decay": self.weight_decay, "decay": sorted(n for n, d in self.decay.items() if d)}

    def load_state(self, tensors: dict, info: dict, source: str = "optimizer state") -> None:
        """Restore m, v and t, checking every name and shape against the parameters."""
        from minimoe.errors import CheckpointError
        for kind, store in (("m", self.m), ("v", self.v)):
            for name, arr in store.items():
                key = f"{kind}.{name}"
                if key not in tensors:
                    raise CheckpointError(f"{source}: missing tensor {key!r} (expected shape {arr.shape})")
                if tensors[key].shape != arr.shape:
                    raise CheckpointError(f"{source}: tensor {key!r} has shape {tensors[key].shape}, "
                                          f"expected {arr.shape}")
                arr[...] = tensors[key]
        extra = sorted(set(tensors) - {f"{k}.{n}" for k in "mv" for n in self.params})
        if extra:
            raise CheckpointError(f"{source}: unexpected tensor {extra[0]!r}; the model has no such parameter")
        self.t = int(info["t"])
