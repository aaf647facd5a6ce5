"""Hypothesis properties of minimoe.quant: the round-trip error of every format stays inside
a bound derived from its encoding rule, scaled by each block's largest magnitude amax.

Shapes: N blocks of BS values (32, or 64 for nf4).

The bounds (also in docs/formats.md). e16(v) is the error of storing v as fp16: at most
|v| * 2^-11 for normal halves, at most 2^-25 in the subnormal range, so e16(v) <= |v| 2^-11 + 2^-25.

  q8_0   d = amax/127, q = round(x/d):           |x - x^| <= d/2 + 127 e16(d)
                                                          <= amax/254 + amax 2^-11 + 127 * 2^-25
  q4_0   d = max/-8, codes -8..7:                 |x - x^| <= |d| (a value of -max clamps to 7d)
                                                           + 8 e16(d) <= amax/8 + amax 2^-11 + 8 * 2^-25
  q4_1   d = (max-min)/15 <= 2 amax/15:           |x - x^| <= d/2 + 15 e16(d) + e16(min)
                                                          <= amax/15 + 3 amax 2^-11 + 16 * 2^-25
  mxfp4  s = 2^floor(log2 amax) / 4, amax in [4s, 8s):
         rounding to the grid {0, .5, 1, 1.5, 2, 3, 4, 6} s costs at most half its widest gap, s;
         clipping to 6s costs amax - 6s < amax/4.   |x - x^| <= amax/4
         (blocks with amax < 2^-125 decode to zeros, an error below 2^-125)
  nf4    absmax exact in float32; rounding to the nearest level costs at most half the widest
         gap of the table (between -1 and -0.696):  |x - x^| <= 0.152 amax
The tiny blocks of the TINY BLOCKS notes (amax < ~1e-37) fall inside the absolute terms.
Every bound gets a relative slack of 1e-5 for the float32 arithmetic of the encoders.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minimoe import quant
from minimoe.quant import nf4

E16_ABS = 2.0 ** -25
NF4_HALF_GAP = float(np.max(np.diff(nf4.NF4_VALUES.astype(np.float64)))) / 2   # 0.1519...


def error_bound(fmt: str, amax: np.ndarray) -> np.ndarray:
    """Largest allowed |x - dequantize(quantize(x))| for blocks with largest magnitude amax (N,)."""
    amax = amax.astype(np.float64)
    if fmt == "q8_0":
        bound = amax / 254 + amax * 2.0 ** -11 + 127 * E16_ABS
    elif fmt == "q4_0":
        bound = amax / 8 + amax * 2.0 ** -11 + 8 * E16_ABS
    elif fmt == "q4_1":
        bound = amax / 15 + 3 * amax * 2.0 ** -11 + 16 * E16_ABS
    elif fmt == "mxfp4":
        bound = amax / 4 + 2.0 ** -125
    elif fmt == "nf4":
        bound = NF4_HALF_GAP * amax + 2.0 ** -140
    return bound * (1 + 1e-5)


# Finite float32 values that stay inside the fp16 range of every scale and minimum
# (|x| <= 6e4), times a per-block power of two so blocks differ wildly in magnitude.
values = st.floats(-6e4, 6e4, width=32, allow_nan=False, allow_infinity=False)


@st.composite
def blocks_for(draw, fmt):
    bs = quant.block_size(fmt)
    n = draw(st.integers(1, 4))
    x = draw(arrays(np.float32, (n, bs), elements=values))
    shift = draw(arrays(np.int32, (n, 1), elements=st.integers(-40, 0)))
    return np.ldexp(x, shift).astype(np.float32)       # (N, BS) * 2^(N, 1)


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q4_1", "mxfp4", "nf4"])
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_round_trip_error_within_bound(fmt, data):
    x = data.draw(blocks_for(fmt))                                   # (N, BS)
    x_hat = quant.quantize(x, fmt).dequantize()                      # (N, BS)
    assert np.isfinite(x_hat).all()
    err = np.abs(x_hat.astype(np.float64) - x).max(axis=1)          # (N,)
    amax = np.abs(x).max(axis=1)                                     # (N,)
    bound = error_bound(fmt, amax)
    assert (err <= bound).all(), f"error {err} above bound {bound} for amax {amax}"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q4_1", "mxfp4"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_bytes_match_gguf_on_generated_blocks(fmt, data):
    gguf = pytest.importorskip("gguf")
    x = data.draw(blocks_for(fmt))
    # gguf's bytes for blocks with amax < ~1e-36 depend on the CPU (see TINY BLOCKS in the
    # format modules; test_quant_formats.py checks them on x86), so compare the others only.
    amax = np.abs(x).max(axis=1)
    keep = (amax == 0) | (amax > 1e-36)
    expected = gguf.quants.quantize(x, gguf.GGMLQuantizationType[fmt.upper()])
    np.testing.assert_array_equal(quant.quantize(x, fmt).blocks[keep], expected[keep])


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q4_1", "mxfp4", "nf4"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_zero_stays_zero_and_max_is_kept(fmt, data):
    """Exact zeros decode to 0 in every symmetric format, and q4_0 / nf4 / q8_0 keep a block's
    largest value up to the fp16 rounding of the scale."""
    x = data.draw(blocks_for(fmt))
    x[:, 1] = 0.0
    x_hat = quant.quantize(x, fmt).dequantize()
    if fmt != "q4_1":                                   # q4_1 offsets by min: 0 need not be a level
        assert (x_hat[:, 1] == 0).all()
    if fmt in ("q8_0", "q4_0", "nf4"):
        i = np.abs(x).argmax(axis=1)
        rows = np.arange(len(x))
        rel = 2.0 ** -11 if fmt != "nf4" else 1e-7
        np.testing.assert_allclose(x_hat[rows, i], x[rows, i], rtol=rel, atol=2.0 ** -17)
