"""bf16 / fp16 weights used as stored (minimoe/kernels/halfmatmul.py, minimoe/quant/bf16.py): each
GEMV kernel against its NumPy twin on ragged shapes, against a float64 reference, and bit-exact
on all 65536 bit patterns; the bf16 rounding by hand."""
import numpy as np
import pytest

import minimoe
from minimoe.kernels.halfmatmul import GEMV, matmul_bf16, matmul_fp16, widen
from minimoe.kernels.packed import KernelInputError
from minimoe.quant.bf16 import bf16_to_float32, float32_to_bf16, fp16_value_loop

SHAPES = [(1, 1, 1), (1, 17, 33), (2, 31, 7), (3, 65, 130), (4, 100, 257)]


def _weights(rng, shape, fmt):
    w = rng.standard_normal(shape).astype(np.float32)
    return float32_to_bf16(w) if fmt == "bf16" else w.astype(np.float16)


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
@pytest.mark.parametrize("R,O,I", SHAPES)
def test_gemv_equals_twin_and_float64_reference(fmt, R, O, I):
    rng = np.random.default_rng(R * 1000 + O + I)
    x = rng.standard_normal((R, I)).astype(np.float32)
    w = _weights(rng, (O, I), fmt)
    bits = w.view(np.uint16)[None]                                      # (1, O, I)
    experts = np.zeros(R, np.int64)
    a, b = np.empty((R, O), np.float32), np.empty((R, O), np.float32)
    GEMV[fmt].numba(x, bits, experts, a)
    GEMV[fmt].numpy(x, bits, experts, b)
    ref = x.astype(np.float64) @ widen(w.view(np.uint16), fmt).astype(np.float64).T
    tol = 1e-5 * np.sqrt(I) * np.abs(ref).max(initial=1.0)
    np.testing.assert_allclose(a, b, atol=tol, rtol=0)
    np.testing.assert_allclose(a, ref, atol=tol, rtol=0)
    mm = matmul_bf16 if fmt == "bf16" else matmul_fp16
    np.testing.assert_allclose(mm(x, w), ref, atol=tol, rtol=0)


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_prefill_path_and_leading_axes(fmt):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 70)).astype(np.float32)              # 10 rows: BLAS over tiles
    w = _weights(rng, (300, 70), fmt)                                   # more rows than one tile
    mm = matmul_bf16 if fmt == "bf16" else matmul_fp16
    ref = x.astype(np.float64) @ widen(w.view(np.uint16), fmt).astype(np.float64).T
    np.testing.assert_allclose(mm(x, w), ref, atol=1e-4, rtol=0)
    assert mm(x, w).shape == (2, 5, 300)


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
@pytest.mark.parametrize("R", [3, 6])
def test_stack_of_experts(fmt, R):
    rng = np.random.default_rng(R)
    E, O, I = 5, 19, 40
    x = rng.standard_normal((R, I)).astype(np.float32)
    w = _weights(rng, (E, O, I), fmt)
    experts = rng.integers(0, E, R).astype(np.int64)
    mm = matmul_bf16 if fmt == "bf16" else matmul_fp16
    got = mm(x, w, experts)
    dense = widen(w.view(np.uint16), fmt).astype(np.float64)
    ref = np.stack([dense[experts[r]] @ x[r].astype(np.float64) for r in range(R)])
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    with minimoe.backend("numpy"):
        np.testing.assert_allclose(mm(x, w, experts), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_every_bit_pattern_widens_exactly(fmt):
    """x = 1 against a (65536, 1) weight: the kernel's output is each 16-bit value, widened."""
    bits = np.arange(65536, dtype=np.uint16).reshape(1, 65536, 1)
    out = np.empty((1, 65536), np.float32)
    GEMV[fmt].numba(np.ones((1, 1), np.float32), bits, np.zeros(1, np.int64), out)
    if fmt == "bf16":
        want = (np.arange(65536, dtype=np.uint32) << 16).view(np.float32)
    else:
        want = np.array([fp16_value_loop(b) for b in range(65536)], np.float32)
        np.testing.assert_array_equal(want, np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32))
    # equal values (the sum 0 + 1 * -0.0 is +0.0, so -0.0 comes out as 0), NaN where NaN
    np.testing.assert_array_equal(out[0], want)


def test_bf16_is_the_top_half_of_a_float32_by_hand():
    assert bf16_to_float32(np.uint16(0x3F80)) == 1.0
    assert bf16_to_float32(np.uint16(0xC020)) == -2.5
    x = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -0.0, np.inf, 3.4e38], np.float32)
    # 1 + 2^-8 is halfway between 0x3F80 and 0x3F81: ties go to the even one, 0x3F80;
    # 1 + 3*2^-8 is halfway between 0x3F81 and 0x3F82 -> 0x3F82; a hair above halfway rounds up
    assert float32_to_bf16(x).tolist() == [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0x8000, 0x7F80, 0x7F80]
    assert np.isnan(bf16_to_float32(float32_to_bf16(np.array([np.nan], np.float32))))[0]
    w = np.random.default_rng(0).standard_normal(10_000).astype(np.float32)
    assert np.abs(bf16_to_float32(float32_to_bf16(w)) - w).max() <= np.abs(w).max() * 2**-8


def test_bad_inputs_raise_clear_errors():
    w = float32_to_bf16(np.ones((4, 8), np.float32))
    x = np.ones((1, 8), np.float32)
    with pytest.raises(KernelInputError, match="uint16 bits of a bf16"):
        matmul_bf16(x, w.astype(np.float32))
    with pytest.raises(KernelInputError, match="float16 array"):
        matmul_fp16(x, w)
    with pytest.raises(KernelInputError, match=r"x must be float32 of shape \(\.\.\., 8\)"):
        matmul_bf16(np.ones((1, 7), np.float32), w)
    with pytest.raises(KernelInputError, match="needs `experts`"):
        matmul_bf16(x, w[None])
    with pytest.raises(KernelInputError, match="experts must lie in 0..0"):
        matmul_bf16(x, w[None], np.array([1]))
