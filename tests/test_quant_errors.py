"""minimoe.quant refuses bad input with a QuantError that names the tensor, the format and
the numbers involved; a QTensor cannot be built around bytes that do not fit its format.

Shapes: (rows, C) float arrays; packed blocks (rows, C // BS * BB) uint8.
"""
import numpy as np
import pytest

from minimoe import quant
from minimoe.errors import MinimoeError
from minimoe.quant import QTensor, QuantError, mxfp4, q4_0


def test_quant_error_is_a_value_error():
    assert issubclass(QuantError, ValueError) and issubclass(QuantError, MinimoeError)


@pytest.mark.parametrize("fmt, size", [("q4_0", 32), ("q8_0", 32), ("mxfp4", 32), ("nf4", 64)])
def test_last_dim_not_a_multiple_of_the_block(fmt, size):
    with pytest.raises(QuantError) as info:
        quant.quantize(np.zeros((4, 48), np.float32), fmt, name="blk.3.ffn_down")
    msg = str(info.value)
    for part in ("blk.3.ffn_down", fmt, "48", str(size), "(4, 48)"):
        assert part in msg, (part, msg)


def test_unknown_format_lists_the_known_ones():
    with pytest.raises(QuantError, match=r"unknown quant format 'q8_k'.*mxfp4.*nf4.*q4_0.*q4_1.*q8_0"):
        quant.quantize(np.zeros(32), "q8_k")
    with pytest.raises(QuantError, match="unknown quant format"):
        quant.block_size("int4")
    with pytest.raises(QuantError, match="must be a string"):
        quant.bits_per_weight(4)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input(bad):
    x = np.ones((2, 64), np.float32)
    x[1, 7] = bad
    with pytest.raises(QuantError, match=r"tensor 'w' has 1 non-finite value.*\(1, 7\)"):
        quant.quantize(x, "q4_0", name="w")


def test_float64_that_overflows_float32_is_non_finite():
    x = np.ones(32)
    x[3] = 1e300
    with pytest.raises(QuantError, match=r"non-finite value.*float32.*\(3,\)"):
        quant.quantize(x, "q8_0")


@pytest.mark.parametrize("array, match", [
    (np.zeros(32, dtype=complex), "real numbers"),
    (np.array(["a"] * 32), "real numbers"),
    (np.float32(1.0), "0-d"),
])
def test_unusable_arrays(array, match):
    with pytest.raises(QuantError, match=match):
        quant.quantize(array, "q8_0")


def test_fp16_overflow_warns_but_keeps_gguf_bytes():
    x = np.zeros((2, 32), np.float32)
    x[0, 0] = 1e7                                    # d = 1e7 / 127 > 65504
    with pytest.warns(RuntimeWarning, match=r"q8_0: 1 block scale\(s\) exceed the fp16 range"):
        qt = quant.quantize(x, "q8_0")
    assert qt.blocks[0, :2].tolist() == [0x00, 0x7C]   # fp16 +inf, as llama.cpp writes it
    with pytest.warns(RuntimeWarning, match="minimum"):
        quant.quantize(np.full((1, 32), -7e4, np.float32), "q4_1")


# ----------------------------------------------------------------------------------------
# QTensor construction and validate()
# ----------------------------------------------------------------------------------------

def good_blocks():
    return np.zeros((4, 2 * 18), np.uint8)           # q4_0 bytes for float shape (4, 64)


def test_qtensor_accepts_matching_bytes():
    qt = QTensor("Q4_0", [4, 64], good_blocks(), name="w")
    assert qt.fmt == "q4_0" and qt.shape == (4, 64) and qt.n_blocks == 8
    assert not qt.dequantize().any()


@pytest.mark.parametrize("blocks, match", [
    (good_blocks().astype(np.int8), "dtype uint8, got int8"),
    (good_blocks().astype(np.float32), "dtype uint8, got float32"),
    (np.zeros((4, 35), np.uint8), r"must have shape \(4, 36\).*got \(4, 35\)"),
    (np.zeros((4, 2, 18), np.uint8), r"byte count is right: use blocks.reshape\(\(4, 36\)\)"),
    (np.zeros(144, np.uint8), r"reshape\(\(4, 36\)\)"),
    (np.zeros((4, 72), np.uint8)[:, ::2], "C-contiguous"),
    ([[0] * 36] * 4, "numpy uint8 array, got list"),
])
def test_qtensor_rejects_bad_blocks(blocks, match):
    with pytest.raises(QuantError, match=match) as info:
        QTensor("q4_0", (4, 64), blocks, name="blk.0.attn_q")
    assert "blk.0.attn_q" in str(info.value) and "q4_0" in str(info.value)


@pytest.mark.parametrize("fmt, shape, match", [
    ("q4_0", (4, 60), "not a multiple of 32"),
    ("q4_0", (), "at least one axis"),
    ("q4_0", (-4, 64), "negative"),
    ("q4_0", "ab", "sequence of ints"),
    ("q8_k", (4, 64), "unknown quant format"),
])
def test_qtensor_rejects_bad_shape_or_format(fmt, shape, match):
    with pytest.raises(QuantError, match=match):
        QTensor(fmt, shape, good_blocks())


def test_validate_catches_later_changes():
    qt = quant.quantize(np.ones((4, 64), np.float32), "q4_0", name="w")
    qt.blocks = qt.blocks[:, :-1]
    with pytest.raises(QuantError, match=r"tensor 'w' \(q4_0\).*shape \(4, 36\)"):
        qt.validate()
    qt = quant.quantize(np.ones((4, 64), np.float32), "q4_0")
    qt.shape = (4, 96)
    with pytest.raises(QuantError):
        qt.validate()


def test_dequantize_wants_a_qtensor():
    with pytest.raises(QuantError, match="expects a QTensor, got ndarray"):
        quant.dequantize(np.zeros((4, 36), np.uint8))


# ----------------------------------------------------------------------------------------
# Block-level functions and the MXFP4 converters
# ----------------------------------------------------------------------------------------

def test_block_functions_check_their_input():
    with pytest.raises(QuantError, match=r"q4_0.quantize_blocks expects shape \(N, 32\), got \(64,\)"):
        q4_0.quantize_blocks(np.zeros(64, np.float32))
    with pytest.raises(QuantError, match="non-finite"):
        q4_0.quantize_blocks(np.full((1, 32), np.nan, np.float32))
    with pytest.raises(QuantError, match=r"dequantize_blocks expects shape \(N, 18\), got \(2, 17\)"):
        q4_0.dequantize_blocks(np.zeros((2, 17), np.uint8))
    with pytest.raises(QuantError, match="uint8 bytes, got dtype int64"):
        q4_0.dequantize_blocks(np.zeros((2, 18), np.int64))


def test_from_hf_mxfp4_checks_its_input():
    blocks = np.zeros((3, 2, 16), np.uint8)
    scales = np.zeros((3, 2), np.uint8)
    with pytest.raises(QuantError, match=r"'l0.mlp1'.*must be uint8, got int32"):
        quant.from_hf_mxfp4(blocks.astype(np.int32), scales, name="l0.mlp1")
    with pytest.raises(QuantError, match=r"shape \[\.\.\., n_blocks, 16\], got \[3, 2, 17\]"):
        quant.from_hf_mxfp4(np.zeros((3, 2, 17), np.uint8), scales)
    with pytest.raises(QuantError, match=r"scales shape \[3\] must equal .*\[3, 2\]"):
        quant.from_hf_mxfp4(blocks, np.zeros(3, np.uint8))
    assert quant.from_hf_mxfp4(blocks, scales).shape == (3, 64)


def test_to_hf_mxfp4_needs_mxfp4():
    qt = quant.quantize(np.ones((2, 32), np.float32), "q4_0")
    with pytest.raises(QuantError, match="needs an mxfp4 QTensor, got q4_0"):
        mxfp4.to_hf_mxfp4(qt)
