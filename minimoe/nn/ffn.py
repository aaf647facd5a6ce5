"""The SwiGLU feed-forward network (Shazeer, 2020), as in Llama and Mixtral:

    FFN(x) = down( silu(gate x) * up x ),   silu(a) = a * sigmoid(a)

Mixtral's checkpoints call the three weights w1 (gate), w3 (up) and w2 (down).
gpt-oss uses a clamped variant ("swiglu_oai"): with a = min(gate x, limit) and
u = clip(up x, -limit, limit), h = (u + 1) * a * sigmoid(alpha * a).

The same function is one dense FFN, one routed expert, or the shared experts.

Shape legend: (..., C) any leading shape, C d_model, F ffn width.
"""
from __future__ import annotations

import numpy as np

from minimoe.kernels.dispatch import Leaf
from minimoe.nn import linear


def sigmoid(a: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-a)), computed as 0.5 * (1 + tanh(a / 2)), which never overflows."""
    s = 0.5 * a                                          # a new array; the rest works in place on it
    np.tanh(s, out=s)
    s *= 0.5
    s += 0.5
    return s


def glu_forward(a: np.ndarray, u: np.ndarray, act: str = "swiglu", limit: float = 7.0,
                alpha: float = 1.702):
    """The gated activation h (..., F) from gate pre-activation a and up pre-activation u."""
    if act == "swiglu":
        s = sigmoid(a)                                   # (..., F)
        silu = a * s                                     # (..., F) silu(a) = a sigmoid(a)
        h = silu * u                                     # (..., F)
        return h, (a, u, s, act, silu)
    # swiglu_oai: clamp, then a * sigmoid(alpha a) * (u + 1)
    a_c = np.minimum(a, limit)
    u_c = np.clip(u, -limit, limit)
    s = sigmoid(alpha * a_c)
    h = a_c * s * (u_c + 1)
    return h, (a, u, s, act, a_c, u_c, limit, alpha)


def glu_backward(dh: np.ndarray, cache):
    """dh (..., F) -> (da, du)."""
    a, u, s, act = cache[:4]
    if act == "swiglu":
        silu = cache[4]
        du = dh * silu                                   # h = silu(a) u  =>  dh/du = silu(a)
        # d silu/da = s + a s (1 - s) = s + silu (1 - s); built in place on one array:
        da = 1 - s
        da *= silu
        da += s
        da *= u
        da *= dh                                         # da = dh * u * (s + silu (1 - s))
        return da, du
    a_c, u_c, limit, alpha = cache[4:]
    glu = a_c * s
    du = dh * glu * (np.abs(u) <= limit)                 # clipped entries pass no gradient
    da = dh * (u_c + 1) * (s + alpha * glu * (1 - s)) * (a <= limit)
    return da, du


# A leaf with no compiled kernel: NumPy's tanh runs on SIMD units, Numba's calls the scalar libm
# (4x slower at F = 1408). It is a leaf so that the trace counts it.
GLU = Leaf("activation", glu_forward)


def forward(x: np.ndarray, w_gate, w_up, w_down, b_gate=None, b_up=None, b_down=None,
            act: str = "swiglu", limit: float = 7.0, alpha: float = 1.702, experts=None, name: str = "ffn"):
    """x (..., C), w_gate/w_up (F, C), w_down (C, F) -> y (..., C). `name` labels it in a trace
    ("ffn", "moe.experts", "moe.shared").

    With stacks w_gate/w_up (E, F, C), w_down (E, C, F) (and biases (E, F), (E, C)) and experts
    (N,), row n of x runs through expert experts[n]: every routed expert of an MoE layer at once."""
    # gate and up both read x: one leaf computes the two products (nn/linear.py's forward_many)
    (a, u), (gate_lin, up_lin) = linear.forward_many(
        x, [w_gate, w_up], [b_gate, b_up], experts, names=(name + ".gate", name + ".up"))  # (..., C) -> (..., F) each
    h, glu = GLU(a, u, act, limit, alpha, name=name + ".act")                    # (..., F)
    y, down_lin = linear.forward(h, w_down, b_down, experts, name=name + ".down")  # (..., F) -> (..., C)
    return y, (gate_lin, up_lin, glu, down_lin)


def backward(dy: np.ndarray, cache):
    """dy (..., C) -> (dx (..., C), grads {"gate", "up", "down", "gate_bias", "up_bias", "down_bias"})."""
    gate_lin, up_lin, glu, down_lin = cache
    dh, dw_down, db_down = linear.backward(dy, down_lin)
    da, du = glu_backward(dh, glu)
    dx_gate, dw_gate, db_gate = linear.backward(da, gate_lin)
    dx_up, dw_up, db_up = linear.backward(du, up_lin)
    grads = {"gate": dw_gate, "up": dw_up, "down": dw_down}
    for name, db in (("gate_bias", db_gate), ("up_bias", db_up), ("down_bias", db_down)):
        if db is not None:
            grads[name] = db
    return dx_gate + dx_up, grads
