"""The fused K-quant kernels (q4_k, q6_k): the Numba GEMV against its NumPy twin and against the
reference (dequantize with quant/, then multiply), on ragged shapes, one matrix and stacks of
experts, and through minimoe.matmul and the model's matmul leaf."""
from __future__ import annotations

import numpy as np
import pytest

import minimoe
from minimoe import quant
from minimoe.kernels import kquant_matmul
from minimoe.nn import linear

FORMATS = ["q4_k", "q6_k"]


def weights(fmt, shape, seed=0):
    w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return quant.quantize(w, fmt, name="w")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("R, O, I", [(1, 7, 256), (3, 13, 512), (4, 33, 768)])
def test_gemv_numba_equals_twin_and_reference(fmt, R, O, I):
    qt = weights(fmt, (O, I))
    x = np.random.default_rng(1).standard_normal((R, I)).astype(np.float32)
    ref = x @ qt.dequantize().T                                     # (R, O)
    experts = np.zeros(R, np.int64)
    got = {}
    for side in ("numba", "numpy"):
        out = np.empty((R, O), np.float32)
        fn = getattr(kquant_matmul.gemv_q4_k if fmt == "q4_k" else kquant_matmul.gemv_q6_k, side)
        fn(x, qt.blocks[None], experts, out)
        got[side] = out
    np.testing.assert_allclose(got["numpy"], ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got["numba"], ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("fmt", FORMATS)
def test_stack_of_experts_each_row_its_own_matrix(fmt):
    E, O, I, R = 3, 9, 256, 4
    qt = weights(fmt, (E, O, I), seed=2)
    x = np.random.default_rng(3).standard_normal((R, I)).astype(np.float32)
    experts = np.array([2, 0, 2, 1])
    dense = qt.dequantize()
    ref = np.stack([dense[e] @ x[r] for r, e in enumerate(experts)])
    np.testing.assert_allclose(kquant_matmul.kmatmul(x, qt, experts), ref, rtol=1e-4, atol=1e-3)
    x8 = np.random.default_rng(4).standard_normal((8, I)).astype(np.float32)     # prefill path
    e8 = np.array([0, 1, 2, 0, 1, 2, 2, 2])
    ref8 = np.stack([dense[e] @ x8[r] for r, e in enumerate(e8)])
    np.testing.assert_allclose(kquant_matmul.kmatmul(x8, qt, e8), ref8, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("fmt", FORMATS)
def test_wired_into_matmul_and_the_leaf(fmt):
    qt = weights(fmt, (5, 256), seed=6)
    x = np.random.default_rng(7).standard_normal((2, 256)).astype(np.float32)
    ref = x @ qt.dequantize().T
    np.testing.assert_allclose(minimoe.matmul(x, qt), ref, rtol=1e-4, atol=1e-3)
    fused = linear.MATMUL.pick(x, qt, None, None) is not linear.MATMUL.numpy
    assert fused == (minimoe.get_backend() == "numba")          # the fused kernel runs (numpy: the twin)
    np.testing.assert_allclose(linear.MATMUL(x, qt, None, None), ref, rtol=1e-4, atol=1e-3)
