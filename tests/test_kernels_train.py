"""The compiled row kernels (minimoe/kernels/train.py) against their NumPy twins in minimoe/nn/, and the
layers that use them against the same layers on the numpy backend, on odd shapes in float32."""
import numpy as np
import pytest

import minimoe
from minimoe.config import Config
from minimoe.nn import attention, norm, rope

F32 = np.float32


def rand(rng, *shape):
    return rng.normal(size=shape).astype(F32)


def run_both(leaf, *inputs):
    """Run the leaf's Numba kernel and its NumPy twin (in minimoe/nn/) on copies of the inputs;
    return both results and both sets of inputs (some kernels write over an input)."""
    res = []
    for fn in (leaf.numba, leaf.numpy):
        ins = [a.copy() if isinstance(a, np.ndarray) else a for a in inputs]
        res.append((ins, fn(*ins)))
    return res


@pytest.mark.parametrize("R,C", [(1, 1), (7, 13), (33, 128)])
def test_rmsnorm_kernels(R, C):
    rng = np.random.default_rng(R * C)
    x, w, dy = rand(rng, R, C), rand(rng, C), rand(rng, R, C)
    (_, (y1, xh1, r1)), (_, (y0, xh0, r0)) = run_both(norm.RMSNORM, x, w, 1e-5)
    for a, b in ((y1, y0), (xh1, xh0), (r1, r0)):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6)
    (_, (dx1, dw1)), (_, (dx0, dw0)) = run_both(norm.RMSNORM_BACKWARD, dy, xh0, r0, w)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dw1, dw0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("B,H,T,D", [(1, 1, 1, 2), (2, 3, 5, 6), (3, 4, 17, 32)])
def test_rope_kernels_on_transposed_views(B, H, T, D):
    rng = np.random.default_rng(D)
    x = rand(rng, B, T, H, D).transpose(0, 2, 1, 3)     # (B, H, T, D), not contiguous, as attention has it
    cos, sin = rope.cos_sin(np.arange(T), D, 10000.0)
    for leaf in (rope.ROTATE, rope.ROTATE_BACK):
        (_, out1), (_, out0) = run_both(leaf, x, cos, sin)
        np.testing.assert_allclose(out1, out0, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("R,S", [(1, 1), (9, 5), (64, 64)])
def test_softmax_backward_kernel(R, S):
    rng = np.random.default_rng(S)
    logits = rand(rng, R, S)
    logits[:, S // 2 + 1:] = -np.inf                     # masked entries have probability 0
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    dp = rand(rng, R, S)
    (_, (ds1, inner1)), (_, (ds0, inner0)) = run_both(attention.SOFTMAX_BACKWARD, dp, p)
    np.testing.assert_allclose(ds1, ds0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(inner1, inner0, rtol=1e-5, atol=1e-6)
    assert np.all(ds1[:, S // 2 + 1:] == 0)


def layer_outputs(seed):
    """Forward and backward of RMSNorm, RoPE and attention (with sinks and a window), float32."""
    rng = np.random.default_rng(seed)
    cfg = Config(d_model=24, n_layers=1, n_heads=6, n_kv_heads=2, d_ff=8, attn_sinks=True, sliding_window=4,
                 qk_norm="head")
    from minimoe.model import init_params, sub_params
    p = sub_params(init_params(cfg, seed=1), "layers.0.attn.")
    p = {n: a + rand(rng, *a.shape) * 0.3 for n, a in p.items()}
    x, dout = rand(rng, 3, 11, 24), rand(rng, 3, 11, 24)
    cos, sin = rope.cos_sin(np.arange(11), cfg.head_dim, cfg.rope_theta)
    w = rand(rng, 24)
    y, nc = norm.forward(x, w, 1e-5)
    dxn, dwn = norm.backward(dout, nc)
    q = x.reshape(3, 11, 6, 4).transpose(0, 2, 1, 3)
    yr, rc = rope.forward(q, cos, sin)
    dr = rope.backward(yr, rc)
    a, ac = attention.forward(x, p, cfg, 0, cos, sin)
    da, g = attention.backward(dout, ac)
    return [y, dxn, dwn, yr, dr, a, da] + [g[n] for n in sorted(g)]


def test_layers_agree_across_backends():
    compiled = layer_outputs(0)
    with minimoe.backend("numpy"):
        reference = layer_outputs(0)
    for c, r in zip(compiled, reference):
        np.testing.assert_allclose(c, r, rtol=2e-5, atol=2e-6)
