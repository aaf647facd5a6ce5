"""Golden checks for minimoe.quant: bytes and float bits against the `gguf` package
(llama.cpp's own Python port of ggml-quants.c), the gpt-oss MXFP4 layout, and blocks
worked out by hand.

Shapes: N blocks of BS values (32, or 64 for nf4); BB bytes per block.
"""
import platform
import warnings

import numpy as np
import pytest

from minimoe import quant
from minimoe.quant import mxfp4, nf4, q4_0, q4_1, q8_0

GGUF_FORMATS = ["q8_0", "q4_0", "q4_1", "mxfp4"]
ALL_FORMATS = GGUF_FORMATS + ["nf4"]
ON_X86 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.fixture(scope="module")
def gguf():
    return pytest.importorskip("gguf")


def gguf_quantize(gguf, x, fmt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # gguf's own overflow warnings on extreme inputs
        return gguf.quants.quantize(x, gguf.GGMLQuantizationType[fmt.upper()])


def gguf_dequantize(gguf, b, fmt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gguf.quants.dequantize(b, gguf.GGMLQuantizationType[fmt.upper()])


def ours_quantize(x, fmt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # our fp16-overflow warning (tested on its own below)
        return quant.quantize(x, fmt).blocks


def assert_same_bits(a, b):
    """float32 arrays with identical bit patterns (so -0.0 != +0.0, and nan payloads count)."""
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
    diff = a.view(np.uint32) != b.view(np.uint32)
    if diff.any():
        i = tuple(np.argwhere(diff)[0])
        raise AssertionError(f"{int(diff.sum())} values differ; first at {i}: {a[i]!r} vs {b[i]!r}")


# ----------------------------------------------------------------------------------------
# Quantize: identical bytes to gguf
# ----------------------------------------------------------------------------------------

def random_tensors():
    rng = np.random.default_rng(1234)
    row_scale = 10.0 ** rng.uniform(-6, 4, size=(48, 1))
    return {
        "normal_2d": rng.standard_normal((33, 160)),
        "uniform_1d": rng.uniform(-1, 1, size=(320,)),
        "student_t_3d": rng.standard_t(2, size=(3, 5, 64)),
        "row_scales": rng.standard_normal((48, 96)) * row_scale,
        "small_ints": rng.integers(-20, 21, size=(16, 64)).astype(np.float64),
        "halves": rng.integers(-40, 41, size=(16, 64)) / 2,
    }


@pytest.mark.parametrize("fmt", GGUF_FORMATS)
@pytest.mark.parametrize("case", sorted(random_tensors()))
def test_quantize_random_matches_gguf(gguf, fmt, case):
    x = random_tensors()[case].astype(np.float32)
    expected = gguf_quantize(gguf, x, fmt)
    qt = quant.quantize(x, fmt)
    assert qt.blocks.dtype == np.uint8
    assert qt.blocks.shape == expected.shape           # gguf's (*shape[:-1], C // BS * BB)
    np.testing.assert_array_equal(qt.blocks, expected)


def block(*head, fill=0.0, size=32):
    """One block of `size` values starting with `head`, the rest `fill`."""
    x = np.full(size, fill, dtype=np.float64)
    x[: len(head)] = head
    return x


def edge_cases(fmt):
    """Named (n_blocks, 32) float arrays that probe one rule of `fmt` each."""
    pow2 = [2.0 ** k for k in (-20, -3, 0, 1, 5, 20)]
    below_pow2 = [np.nextafter(np.float32(p), np.float32(0)) for p in pow2]
    cases = {
        "all_zero": np.zeros((3, 32)),
        "positive_max": np.stack([block(0.1, 3.0, -2.9), block(1.0, 0.5, -0.999)]),
        "negative_max": np.stack([block(0.1, -3.0, 2.9), block(-1.0, 0.5, 0.999)]),
        "tie_in_magnitude_pos_first": np.stack([block(2.0, -2.0, 1.0), block(0.5, 7.0, -7.0)]),
        "tie_in_magnitude_neg_first": np.stack([block(-2.0, 2.0, 1.0), block(0.5, -7.0, 7.0)]),
        "single_nonzero": np.stack([block(0, 0, 0, 5.0), block(-1e-3)]),
        "constant_block": np.stack([block(fill=3.7), block(fill=-0.25)]),
        "huge": np.stack([block(1e30, -3e29, 1e10), block(3.0e38, -3.3e38, 1.0)]),
        "float32_max": np.stack([block(np.finfo(np.float32).max, 1.0), block(-np.finfo(np.float32).max)]),
        "tiny_but_fine": np.stack([block(1e-30, -3e-31, 7e-31), block(-1e-20, 1e-21)]),
        "fp16_subnormal_scale": np.stack([block(1e-3, -4e-4, 2e-4), block(-1e-4, 3e-5),
                                          block(1e-6, 3e-7), block(3e-5, 2e-5, -1e-5)]),
        "fp16_overflowing_scale": np.stack([block(1e7, -3e6, 1.0), block(-6e5, 1e5), block(9e5, -9e5)]),
        "fp16_overflowing_min": np.stack([block(-7e4, -6.9e4, 10.0, fill=-6.95e4)]),
        "powers_of_two": np.stack([block(p, -p / 3, p / 7) for p in pow2]),
        "just_below_powers_of_two": np.stack([block(p, -p / 3, p / 7) for p in below_pow2]),
        "mixed_blocks": np.stack([block(1e-30, 2e-31), block(1e30, 5.0), block(0.0), block(-1.0, 0.5)]),
    }
    # values that land exactly on a rounding midpoint, per format
    if fmt == "q8_0":    # amax 127 -> d = 1, id = 1: x is its own x * id
        cases["exact_half_points"] = np.stack([
            block(127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 63.5, -0.49999997),
            block(63.5, 0.25, -0.25, 0.75, -0.75, 1.25, -1.25),           # d = 0.5, id = 2
        ])
    elif fmt == "q4_0":  # max -8 -> d = 1, id = 1: q = trunc(x + 8.5)
        cases["exact_half_points"] = np.stack([
            block(-8, *np.arange(-7.5, 8, 1.0)),
            block(8, *np.arange(-7.5, 8, 1.0)),                            # d = -1
            block(-4, -3.75, -0.25, 0.25, 0.75, 3.75, 3.99),              # d = 0.5
        ])
    elif fmt == "q4_1":  # min 0, max 15 -> d = 1: q = trunc(x - min + 0.5)
        cases["exact_half_points"] = np.stack([
            block(0, 15, *np.arange(0.5, 15, 1.0)),
            block(-8, 7, -7.5, -0.5, 0.5, 6.5, fill=-8),
        ])
    elif fmt == "mxfp4":  # amax in [4, 8) -> scale 1: midpoints of the E2M1 grid
        mids = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
        cases["exact_half_points"] = np.stack([
            block(4.0, *mids, *[-m for m in mids]),
            block(7.0, 6.5, 5.99, -7.9, 6.0, -6.0),                        # above 6: clipped
            block(*[m / 8 for m in mids], 0.5, fill=0.0),                  # scale 1/8
        ])
    return {name: x.astype(np.float32) for name, x in cases.items()}


@pytest.mark.parametrize("fmt", GGUF_FORMATS)
@pytest.mark.parametrize("case", sorted(edge_cases("q8_0")))
def test_quantize_edge_cases_match_gguf(gguf, fmt, case):
    x = edge_cases(fmt)[case]
    np.testing.assert_array_equal(ours_quantize(x, fmt), gguf_quantize(gguf, x, fmt))


# Blocks so small that ggml's 1/d overflows (q8_0, q4_0, q4_1) or its exponent goes below
# zero (mxfp4). ggml's C has undefined behaviour there; x86 (and gguf on x86) gives code 0
# (or a wrapped exponent). We implement the x86 result explicitly (see each module's docs).
TINY_BLOCKS = np.stack([
    block(1e-38, -3e-39, 5e-39), block(2.0 ** -126, 1e-40), block(1e-45, 0.0, -1e-45),
    block(-1e-37, 2e-38), block(2.0 ** -125, 2.0 ** -127),
]).astype(np.float32)


@pytest.mark.skipif(not ON_X86, reason="gguf's result here depends on the CPU's float->int conversion")
@pytest.mark.parametrize("fmt", GGUF_FORMATS)
def test_tiny_blocks_match_gguf_on_x86(gguf, fmt):
    np.testing.assert_array_equal(ours_quantize(TINY_BLOCKS, fmt), gguf_quantize(gguf, TINY_BLOCKS, fmt))


def test_tiny_blocks_documented_behaviour():
    codes = lambda b, start: b[:, start:]
    # q8_0: zero scale, zero codes
    b = q8_0.quantize_blocks(TINY_BLOCKS[:1])
    assert b[0, :2].tolist() == [0, 0] and not codes(b, 2).any()
    # q4_0: all codes 0 -> every element decodes to -8 * d (= max, flushed to 0 in fp16)
    b = q4_0.quantize_blocks(TINY_BLOCKS[:1])
    assert not codes(b, 2).any()
    # mxfp4: exponent wraps modulo 256 (2^-126 -> -1 -> 255), codes 0, decodes to zeros
    b = mxfp4.quantize_blocks(TINY_BLOCKS[1:2])
    assert b[0, 0] == 255 and not codes(b, 1).any()
    assert not mxfp4.dequantize_blocks(b).any()


def test_quantize_accepts_float64_and_float16_like_gguf(gguf):
    x = np.random.default_rng(5).standard_normal((4, 64))
    for dtype in (np.float64, np.float16):
        xd = x.astype(dtype)
        for fmt in GGUF_FORMATS:
            np.testing.assert_array_equal(ours_quantize(xd, fmt),
                                          gguf_quantize(gguf, xd.astype(np.float32), fmt))


# ----------------------------------------------------------------------------------------
# Dequantize: identical float32 bits to gguf, for arbitrary bytes
# ----------------------------------------------------------------------------------------

# random scales include inf and nan; numpy's "invalid value" warnings there are expected
random_bytes_warnings = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                                   "ignore:overflow encountered:RuntimeWarning")


def random_blocks(fmt, n, seed):
    """Random bytes (n, BB): random fp16 scales include subnormals, inf and nan."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, quant.block_bytes(fmt)), dtype=np.uint8)


@random_bytes_warnings
@pytest.mark.parametrize("fmt", GGUF_FORMATS)
def test_dequantize_random_bytes_matches_gguf(gguf, fmt):
    b = random_blocks(fmt, 4096, seed=7)
    assert_same_bits(quant.FORMATS[fmt].dequantize_blocks(b), gguf_dequantize(gguf, b, fmt))
    # and through QTensor, as a (8, 512 * 32) tensor
    qt = quant.QTensor(fmt, (8, 512 * 32), b.reshape(8, -1))
    assert_same_bits(qt.dequantize(), gguf_dequantize(gguf, b.reshape(8, -1), fmt))


@random_bytes_warnings
@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q4_1"])
def test_dequantize_special_fp16_scales_matches_gguf(gguf, fmt):
    specials = np.array([0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x0400, 0x3C00, 0x7BFF,
                         0xFBFF, 0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFE00], dtype="<u2")
    b = random_blocks(fmt, len(specials) ** 2, seed=3)
    d, m = np.meshgrid(specials, specials)
    b[:, 0:2] = d.reshape(-1, 1).view(np.uint8)
    if fmt == "q4_1":
        b[:, 2:4] = m.reshape(-1, 1).view(np.uint8)
    assert_same_bits(quant.FORMATS[fmt].dequantize_blocks(b), gguf_dequantize(gguf, b, fmt))


def mxfp4_every_exponent_and_code():
    """256 blocks: block e has scale byte e and codes 0..15, then 15..0."""
    b = np.zeros((256, 17), dtype=np.uint8)
    b[:, 0] = np.arange(256)
    codes = np.concatenate([np.arange(16), np.arange(16)[::-1]]).astype(np.uint8)
    b[:, 1:] = codes[:16] | (codes[16:] << 4)
    return b


def test_mxfp4_every_exponent_and_code_matches_gguf(gguf):
    b = mxfp4_every_exponent_and_code()
    assert_same_bits(mxfp4.dequantize_blocks(b), gguf_dequantize(gguf, b, "mxfp4"))


def test_mxfp4_scale_byte_extremes():
    x = mxfp4.dequantize_blocks(mxfp4_every_exponent_and_code())     # (256, 32)
    # e = 0xFF is an ordinary exponent 2^128 (not NaN as in the OCP spec), like ggml
    assert x[255, 1] == np.float32(2.0 ** 127)                         # 0.5 * 2^128
    assert np.isinf(x[255, 2]) and np.isinf(x[255, 15])                # 1.0 * 2^128 overflows
    assert not np.isnan(x).any()
    # e = 0: 0.5 * 2^-127 = 2^-128, a float32 subnormal, exactly
    assert x[0, 1] == np.float32(2.0 ** -128)
    # e = 127: plain E2M1 values; code 8 ("-0") decodes to +0.0
    np.testing.assert_array_equal(x[127, :16], mxfp4.E2M1_VALUES)
    assert x[127, 8] == 0 and not np.signbit(x[127, 8])


@random_bytes_warnings
@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_loop_oracle_equals_vectorized_decoder(fmt):
    spec = quant.FORMATS[fmt]
    b = random_blocks(fmt, 200, seed=11)
    loop = np.stack([spec.dequantize_block_loop(row) for row in b])      # (N, BS)
    np.testing.assert_array_equal(loop, spec.dequantize_blocks(b))       # nan == nan here


# ----------------------------------------------------------------------------------------
# Blocks worked out by hand
# ----------------------------------------------------------------------------------------

def test_q4_0_block_by_hand(gguf_optional=None):
    x = np.zeros(32, np.float32)
    x[0], x[1], x[2], x[3], x[4] = -4.0, 2.0, 0.25, -0.25, 1.3
    x[16], x[17] = 3.9, -1.0
    # The largest |x| is x[0] = -4, so d = -4 / -8 = 0.5 and id = 2.
    # q = min(15, trunc(x * 2 + 8.5)):
    #   x[0]  = -4    -> -8   + 8.5 =  0.5 -> 0    decodes (0 - 8) * 0.5  = -4
    #   x[1]  =  2    ->  4   + 8.5 = 12.5 -> 12   decodes  4 * 0.5       =  2
    #   x[2]  =  0.25 ->  0.5 + 8.5 =  9.0 -> 9    decodes  0.5   (a tie, rounded up)
    #   x[3]  = -0.25 -> -0.5 + 8.5 =  8.0 -> 8    decodes  0     (a tie, rounded up)
    #   x[4]  =  1.3  ->  2.6 + 8.5 = 11.1 -> 11   decodes  1.5
    #   x[16] =  3.9  ->  7.8 + 8.5 = 16.3 -> 16 -> clamped to 15, decodes 7 * 0.5 = 3.5
    #   x[17] = -1    -> -2   + 8.5 =  6.5 -> 6    decodes -1
    #   zeros         ->  0   + 8.5 =  8.5 -> 8    decodes  0
    # byte 2 + j = q[j] | q[j + 16] << 4; fp16(0.5) = 0x3800, stored little-endian.
    expected = bytes([0x00, 0x38,
                      0 | 15 << 4, 12 | 6 << 4, 9 | 8 << 4, 8 | 8 << 4, 11 | 8 << 4] + [0x88] * 11)
    assert expected[2:7] == bytes([0xF0, 0x6C, 0x89, 0x88, 0x8B])
    qt = quant.quantize(x[None, :], "q4_0")
    assert qt.blocks.tobytes() == expected
    decoded = np.zeros(32, np.float32)
    decoded[:5] = [-4.0, 2.0, 0.5, 0.0, 1.5]
    decoded[16:18] = [3.5, -1.0]
    np.testing.assert_array_equal(qt.dequantize()[0], decoded)
    np.testing.assert_array_equal(q4_0.dequantize_block_loop(expected), decoded)


def test_q4_0_positive_max_gives_negative_scale():
    x = np.zeros((1, 32), np.float32)
    x[0, 5] = 4.0                                     # d = 4 / -8 = -0.5 -> fp16 0xB800
    b = quant.quantize(x, "q4_0").blocks[0]
    assert b[:2].tolist() == [0x00, 0xB8]
    assert b[2 + 5] & 0x0F == 0                       # 4 * (1 / -0.5) + 8.5 = 0.5 -> code 0
    assert quant.quantize(x, "q4_0").dequantize()[0, 5] == 4.0


def test_q8_0_block_by_hand():
    x = np.zeros((1, 32), np.float32)
    x[0, :5] = [63.5, 0.25, -0.25, 0.75, -0.2]
    # amax 63.5 -> d = 0.5, id = 2; q = roundf(2x) = [127, 1 (0.5 away from 0), -1, 2 (1.5), 0 (-0.4)]
    b = quant.quantize(x, "q8_0").blocks[0]
    assert b[:7].tolist() == [0x00, 0x38, 127, 1, 0xFF, 2, 0]
    np.testing.assert_array_equal(quant.quantize(x, "q8_0").dequantize()[0, :5], [63.5, 0.5, -0.5, 1.0, 0.0])


def test_q4_1_block_by_hand():
    x = np.full((1, 32), 1.0, np.float32)
    x[0, 0], x[0, 1], x[0, 16] = 1.0, 16.0, 8.5
    # min 1, max 16 -> d = 1, m = 1; q = trunc(x - 1 + 0.5): x=16 -> 15, 8.5 -> 8 (7.5 + 0.5), 1 -> 0
    b = quant.quantize(x, "q4_1").blocks[0]
    assert b[:4].tolist() == [0x00, 0x3C, 0x00, 0x3C]           # fp16(1.0) = 0x3C00, twice
    assert b[4] == 0 | 8 << 4 and b[5] == 15 | 0 << 4
    assert quant.quantize(x, "q4_1").dequantize()[0, 16] == 9.0


def test_mxfp4_block_by_hand():
    x = np.zeros((1, 32), np.float32)
    x[0, :4] = [5.0, -0.3, 1.2, 3.0]
    x[0, 16] = -6.5
    # amax 6.5: floor(log2 6.5) = 2 -> e = 2 - 2 + 127 = 127, scale 2^0 = 1.
    # nearest E2M1: 5.0 is a tie of 4 and 6 -> 4 (code 6); -0.3 -> -0.5 (code 9);
    # 1.2 -> 1.0 (code 2); 3.0 -> code 5; -6.5 -> -6 (code 15, clipped).
    b = quant.quantize(x, "mxfp4").blocks[0]
    assert b[0] == 127
    assert b[1:5].tolist() == [6 | 15 << 4, 9, 2, 5]
    np.testing.assert_array_equal(quant.quantize(x, "mxfp4").dequantize()[0, [0, 1, 2, 3, 16]],
                                  [4.0, -0.5, 1.0, 3.0, -6.0])


def test_nf4_block_by_hand():
    x = np.zeros((1, 64), np.float32)
    x[0, :4] = [-2.0, 1.0, 2.0, 0.039]
    # absmax 2 -> v = [-1, 0.5, 1, 0.0195]: codes 0 (-1.0), 12 (0.4407 is 0.059 away from 0.5,
    # 0.5626 is 0.063 away), 15 (1.0), 7 (0.0 is nearer than 0.0796); the rest 0.0 -> code 7.
    b = quant.quantize(x, "nf4").blocks[0]
    assert b[:4].tobytes() == np.float32(2.0).tobytes()
    assert b[4:7].tolist() == [0 << 4 | 12, 15 << 4 | 7, 7 << 4 | 7]
    np.testing.assert_allclose(quant.quantize(x, "nf4").dequantize()[0, :4],
                               2 * nf4.NF4_VALUES[[0, 12, 15, 7]])


def test_nf4_ties_go_to_the_lower_level():
    mid = nf4.NF4_MIDPOINTS[8]                        # between codes 8 and 9
    x = np.zeros((1, 64), np.float32)
    x[0, 0], x[0, 1] = 1.0, mid
    b = nf4.quantize_blocks(x)
    assert b[0, 4] & 0x0F == 8


# ----------------------------------------------------------------------------------------
# gpt-oss / Hugging Face MXFP4 layout
# ----------------------------------------------------------------------------------------
# Written from the gpt-oss checkpoint description, independently of minimoe.quant.mxfp4:
#   *_blocks uint8 [..., nb, 16]: byte i = element 2i (low nibble) | element 2i + 1 (high)
#   *_scales uint8 [..., nb]:     value = FP4[code] * 2^(scale - 127)

GPT_OSS_FP4 = [+0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0,
               -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def gguf_mxfp4_to_hf_by_spec(packed, n_blocks):
    """GGUF MXFP4 bytes (..., nb * 17) -> (blocks (..., nb, 16), scales (..., nb)), by the spec."""
    rows = packed.reshape(*packed.shape[:-1], n_blocks, 17)
    scales = rows[..., 0]
    qs = rows[..., 1:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)      # GGUF: element j low, j + 16 high
    hf = codes[..., 0::2] | (codes[..., 1::2] << 4)            # HF: neighbours share a byte
    return hf.astype(np.uint8), scales.copy()


def gpt_oss_decode(blocks, scales):
    """gpt-oss's decoder: lut[low], lut[high] interleaved, then ldexp(., scale - 127)."""
    lut = np.array(GPT_OSS_FP4, dtype=np.float32)
    out = np.empty((*blocks.shape[:-1], 32), np.float32)
    out[..., 0::2] = lut[blocks & 0x0F]
    out[..., 1::2] = lut[blocks >> 4]
    with np.errstate(over="ignore"):
        out = np.ldexp(out, scales[..., None].astype(np.int32) - 127)
    return out.reshape(*blocks.shape[:-2], -1)


def test_hf_mxfp4_repacks_to_gguf_bytes(gguf):
    rng = np.random.default_rng(21)
    w = (rng.standard_normal((4, 6, 96)) * 10.0 ** rng.uniform(-3, 3, (4, 6, 1))).astype(np.float32)  # (E, F, C)
    gguf_bytes = gguf_quantize(gguf, w, "mxfp4")                # (E, F, 3 * 17)
    hf_blocks, hf_scales = gguf_mxfp4_to_hf_by_spec(gguf_bytes, 3)
    assert hf_blocks.shape == (4, 6, 3, 16) and hf_scales.shape == (4, 6, 3)
    qt = quant.from_hf_mxfp4(hf_blocks, hf_scales, name="experts.gate_up_proj")
    assert qt.shape == (4, 6, 96)
    np.testing.assert_array_equal(qt.blocks, gguf_bytes)
    back_blocks, back_scales = quant.to_hf_mxfp4(qt)
    np.testing.assert_array_equal(back_blocks, hf_blocks)
    np.testing.assert_array_equal(back_scales, hf_scales)


@random_bytes_warnings
def test_hf_mxfp4_values_match_gpt_oss_decoder():
    rng = np.random.default_rng(22)
    blocks = rng.integers(0, 256, (2, 3, 5, 16), dtype=np.uint8)
    scales = rng.integers(0, 256, (2, 3, 5), dtype=np.uint8)
    scales[0, 0, :] = [0, 1, 127, 254, 255]
    ours = quant.from_hf_mxfp4(blocks, scales).dequantize()           # (2, 3, 160)
    np.testing.assert_array_equal(ours, gpt_oss_decode(blocks, scales))   # -0.0 == +0.0 here


def test_hf_mxfp4_by_hand():
    blocks = np.zeros((1, 16), np.uint8)       # one row, one block
    blocks[0, 0] = 0x21      # element 0: code 1 (+0.5), element 1: code 2 (+1.0)
    blocks[0, 1] = 0xF9      # element 2: code 9 (-0.5), element 3: code 15 (-6.0)
    blocks[0, 8] = 0x30      # element 16: code 0,        element 17: code 3 (+1.5)
    scales = np.array([128], np.uint8)         # 2^(128 - 127) = 2
    qt = quant.from_hf_mxfp4(blocks, scales)
    assert qt.shape == (32,)
    # GGUF byte 1 + j = element j (low) | element j + 16 (high)
    expected = [128, 0x01, 0x32, 0x09, 0x0F] + [0] * 12
    assert qt.blocks.tolist() == expected
    x = qt.dequantize()
    np.testing.assert_array_equal(x[[0, 1, 2, 3, 16, 17]], [1.0, 2.0, -1.0, -12.0, 0.0, 3.0])
    assert not x[[4, 5, 15, 18, 31]].any()


# ----------------------------------------------------------------------------------------
# The API surface
# ----------------------------------------------------------------------------------------

def test_format_table():
    assert set(quant.FORMATS) == {"q8_0", "q4_0", "q4_1", "mxfp4", "nf4", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k",
                                  "bf16", "fp16"}   # K-quants: test_quant_kquants.py; bf16/fp16: test_mmap_load.py
    assert {f: quant.bits_per_weight(f) for f in GGUF_FORMATS} == {
        "q8_0": 8.5, "q4_0": 4.5, "q4_1": 5.0, "mxfp4": 4.25}
    assert [quant.block_bytes(f) for f in ALL_FORMATS] == [34, 18, 20, 17, 36]
    assert [quant.block_size(f) for f in ALL_FORMATS] == [32, 32, 32, 32, 64]
    assert quant.block_size("Q4_0") == 32


def test_gguf_block_sizes_agree(gguf):
    for fmt in GGUF_FORMATS:
        qtype = gguf.GGMLQuantizationType[fmt.upper()]
        assert gguf.GGML_QUANT_SIZES[qtype] == (quant.block_size(fmt), quant.block_bytes(fmt))


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_qtensor_round_trip_and_repr(fmt):
    x = np.random.default_rng(0).standard_normal((2, 3, 128)).astype(np.float32)
    qt = quant.quantize(x, fmt, name="blk.0.ffn_up")
    assert qt.fmt == fmt and qt.shape == (2, 3, 128)
    assert qt.nbytes == 2 * 3 * 128 // quant.block_size(fmt) * quant.block_bytes(fmt)
    assert qt.dequantize().dtype == np.float32 and qt.dequantize().shape == x.shape
    np.testing.assert_array_equal(quant.dequantize(qt), qt.dequantize())
    text = repr(qt)
    assert fmt in text and "blk.0.ffn_up" in text and "(2, 3, 128)" in text
    assert qt.validate() is qt
