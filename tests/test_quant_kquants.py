"""K-quants (q4_k, q5_k, q6_k): decoding bit-exact against the `gguf` package, the readable loop
oracles, the bytes of a hand-built block, and the encoder's behaviour.

The gguf package DEcodes K-quants but has no K-quant ENcoder (gguf.quants.quantize raises
NotImplementedError for them), so our encoder, a port of ggml's quantize_row_q*_K_ref, is checked
byte for byte against a fixture of ggml reference bytes (tests/fixtures/make_kquants_ggml.py), and
by what must hold of any output: decode(encode(x)) is close to x with the error each format's bit
budget allows, encoding is stable on its own grid, and hand-built blocks decode exactly.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from minimoe import quant
from minimoe.quant import k_quants, q2_k, q3_k, q4_k, q5_k, q6_k

K_FORMATS = ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
MODULES = {"q2_k": q2_k, "q3_k": q3_k, "q4_k": q4_k, "q5_k": q5_k, "q6_k": q6_k}


@pytest.fixture(scope="module")
def gguf():
    return pytest.importorskip("gguf")


def gguf_dequantize(gguf, b, fmt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gguf.quants.dequantize(b, gguf.GGMLQuantizationType[fmt.upper()]).reshape(b.shape[0], -1)


def same_bits(a, b):
    return a.dtype == b.dtype == np.float32 and a.shape == b.shape and np.array_equal(
        a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("fmt", K_FORMATS)
def test_block_sizes_agree_with_gguf(gguf, fmt):
    qtype = gguf.GGMLQuantizationType[fmt.upper()]
    assert gguf.GGML_QUANT_SIZES[qtype] == (quant.block_size(fmt), quant.block_bytes(fmt))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("fmt", K_FORMATS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dequantize_random_bytes_matches_gguf(gguf, fmt, seed):
    """Arbitrary bytes (fp16 scales include subnormals, inf and nan): the same float32 bits."""
    b = np.random.default_rng(seed).integers(0, 256, size=(40, quant.block_bytes(fmt)), dtype=np.uint8)
    ours = MODULES[fmt].dequantize_blocks(b)
    theirs = gguf_dequantize(gguf, b, fmt)
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))


@pytest.mark.parametrize("fmt", K_FORMATS)
def test_dequantize_of_our_encoding_matches_gguf(gguf, fmt):
    x = np.random.default_rng(5).standard_normal((6, 512)).astype(np.float32)
    qt = quant.quantize(x, fmt)
    assert same_bits(qt.dequantize().reshape(-1, 256), gguf_dequantize(gguf, qt.blocks.reshape(-1, quant.block_bytes(fmt)), fmt))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("fmt", K_FORMATS)
def test_loop_oracle_matches_vectorised_decoder(fmt):
    b = np.random.default_rng(9).integers(0, 256, size=(6, quant.block_bytes(fmt)), dtype=np.uint8)
    b[:, :] = b                                          # finite scales below: set the fp16 fields
    module = MODULES[fmt]
    fields = {"q2_k": [80, 82], "q3_k": [108], "q4_k": [0, 2], "q5_k": [0, 2], "q6_k": [208]}[fmt]
    for at in fields:
        b[:, at:at + 2] = np.array([0.01], np.float16).view(np.uint8)
    vec = module.dequantize_blocks(b)
    for i in range(len(b)):
        assert same_bits(module.dequantize_block_loop(b[i]), vec[i])


def test_scale_min_packing_round_trip_and_oracle():
    rng = np.random.default_rng(3)
    sc = rng.integers(0, 64, (50, 8), dtype=np.uint8)
    m = rng.integers(0, 64, (50, 8), dtype=np.uint8)
    packed = k_quants.pack_scale_min(sc, m)
    back_sc, back_m = k_quants.unpack_scale_min(packed)
    np.testing.assert_array_equal(back_sc, sc)
    np.testing.assert_array_equal(back_m, m)
    for j in range(8):                                   # ggml's get_scale_min_k4, as a loop
        assert k_quants.scale_min_loop(bytes(packed[0]), j) == (sc[0, j], m[0, j])


def test_q4_k_hand_built_block():
    """d = 1, dmin = 0.5, sub-block j has sc = j + 1, m = 2j, codes q[v] = v % 16:
    x[v] = (j + 1) * (v % 16) - 0.5 * 2j with j = v // 32."""
    sc = np.arange(1, 9, dtype=np.uint8)[None]
    m = (2 * np.arange(8)).astype(np.uint8)[None]
    q = (np.arange(256) % 16).astype(np.uint8)[None]
    block = np.concatenate([np.array([1.0, 0.5], np.float16).view(np.uint8)[None],
                            k_quants.pack_scale_min(sc, m), q4_k.pack_codes(q)], axis=1)
    v = np.arange(256)
    expected = ((v // 32 + 1) * (v % 16) - 0.5 * 2 * (v // 32)).astype(np.float32)
    np.testing.assert_array_equal(q4_k.dequantize_blocks(block)[0], expected)
    np.testing.assert_array_equal(q4_k.dequantize_block_loop(block[0]), expected)


def test_q6_k_hand_built_block():
    """d = 0.25, scales[j] = j - 8, codes q[v] = v % 64: x[v] = 0.25 (v//16 - 8) (v % 64 - 32)."""
    q = (np.arange(256) % 64).astype(np.uint8)[None]
    ql, qh = q6_k.pack_codes(q)
    sc = (np.arange(16) - 8).astype(np.int8).view(np.uint8)[None]
    block = np.concatenate([ql, qh, sc, np.array([0.25], np.float16).view(np.uint8)[None]], axis=1)
    v = np.arange(256)
    expected = (0.25 * (v // 16 - 8) * (v % 64 - 32)).astype(np.float32)
    np.testing.assert_array_equal(q6_k.dequantize_blocks(block)[0], expected)
    np.testing.assert_array_equal(q6_k.unpack_codes(ql, qh), q)


@pytest.mark.parametrize("fmt, bound", [("q2_k", 0.36), ("q3_k", 0.18), ("q4_k", 0.09), ("q5_k", 0.045), ("q6_k", 0.025)])
def test_encode_error_within_the_bit_budget(fmt, bound):
    """RMS error relative to the RMS of a Gaussian tensor: each extra bit roughly halves it."""
    x = np.random.default_rng(11).standard_normal((64, 512)).astype(np.float32)
    err = quant.quantize(x, fmt).dequantize() - x
    rel = np.sqrt((err ** 2).mean() / (x ** 2).mean())
    assert rel < bound, rel


@pytest.mark.parametrize("fmt, bound", [("q2_k", 0), ("q3_k", 0.25), ("q4_k", 0), ("q5_k", 0), ("q6_k", 0)])
def test_encode_is_stable_on_its_own_grid(fmt, bound):
    """Encoding values a block already represents gives them back: exactly for q2_k, q4_k..q6_k on
    these blocks; q3_k's one-code-at-a-time search may move a value by one step (max/4)."""
    x = np.random.default_rng(12).standard_normal((8, 256)).astype(np.float32)
    once = quant.quantize(x, fmt).dequantize()
    twice = quant.quantize(once, fmt).dequantize()
    assert np.abs(twice - once).max() <= bound * np.abs(once).max()


@pytest.mark.parametrize("fmt", K_FORMATS)
def test_zero_and_constant_blocks(fmt):
    zeros = np.zeros((2, 256), np.float32)
    np.testing.assert_array_equal(quant.quantize(zeros, fmt).dequantize(), zeros)
    const = np.full((1, 256), -0.75, np.float32)
    np.testing.assert_allclose(quant.quantize(const, fmt).dequantize(), const, rtol=0, atol=2e-3)


def test_q6_k_all_tiny_block_is_zero_bytes():
    """ggml: a super-block whose sub-block scales are all below 1e-15 is written as zero bytes."""
    x = np.full((1, 256), 1e-30, np.float32)
    assert not q6_k.quantize_blocks(x).any()


@pytest.mark.parametrize("fmt", K_FORMATS)
def test_row_length_must_be_a_multiple_of_256(fmt):
    with pytest.raises(quant.QuantError, match="256"):
        quant.quantize(np.zeros((2, 128), np.float32), fmt)


# ----------------------------------------------------------------------------------------
# Encoding: the bytes of ggml's reference encoders (fixture: tests/fixtures/make_kquants_ggml.py)
# ----------------------------------------------------------------------------------------

def ggml_fixture():
    from pathlib import Path
    with np.load(Path(__file__).parent / "fixtures" / "kquants_ggml.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("fmt", K_FORMATS)
def test_encode_matches_ggml_reference_bytes(fmt):
    """quantize_row_q{2,3,4,5,6}_K_ref's bytes for 94 super-blocks of eight kinds (see the generator)."""
    ref = ggml_fixture()
    ours = MODULES[fmt].quantize_blocks(ref["x"])
    bad = np.flatnonzero((ours != ref[fmt]).any(axis=1))
    assert bad.size == 0, f"{fmt}: {bad.size} of {len(ours)} super-blocks differ, first {bad[:5]}"
