"""QTensor: a weight matrix stored as packed quantized blocks, plus quantize/dequantize.

Shapes used in this module:
    shape        the logical float shape, e.g. (F, C) for an FFN weight or (E, F, C) for
                 a stack of experts; the LAST axis is the one cut into blocks
    BS, BB       block size (values per block) and block bytes of the format
    N            number of blocks in the whole tensor = prod(shape) // BS

    float array  shape                    e.g. (F, C)
    blocks       (*shape[:-1], C // BS * BB)   uint8, exactly the bytes a GGUF file stores
                                              for this tensor (and that gguf.quants.quantize returns)

Every format module (q8_0.py, q4_0.py, q4_1.py, mxfp4.py, nf4.py) is a plain module with
    NAME, BLOCK_SIZE, BLOCK_BYTES,
    quantize_blocks(x: float32 (N, BS)) -> uint8 (N, BB)
    dequantize_blocks(b: uint8 (N, BB)) -> float32 (N, BS)
    dequantize_block_loop(one_block: BB bytes) -> float32 (BS,)   # the readable oracle
    nonfinite_blocks(b: uint8 (N, BB)) -> bool (N,)               # which decode to NaN/inf, cheaply
and FORMATS maps the name to the module. This file knows nothing about any one format.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from minimoe.errors import MinimoeError


class QuantError(MinimoeError, ValueError):
    """Bad input to quantization: unknown format, a row length that does not split into
    blocks, non-finite values, or packed bytes of the wrong dtype/size."""


# Format name -> format module. Filled in minimoe/quant/__init__.py (each format module
# imports this file for QuantError, so this file cannot import them back).
FORMATS: dict[str, ModuleType] = {}


def format_module(fmt: str) -> ModuleType:
    """The format module for `fmt` ("q8_0", "Q4_0", ...), or a QuantError listing the known ones."""
    if not isinstance(fmt, str):
        raise QuantError(f"quant format must be a string such as 'q4_0', got {type(fmt).__name__}")
    module = FORMATS.get(fmt.lower())
    if module is None:
        raise QuantError(f"unknown quant format {fmt!r}; known formats: {', '.join(sorted(FORMATS))}")
    return module


def block_size(fmt: str) -> int:
    """Number of float values in one block of `fmt` (32 for the GGUF formats)."""
    return format_module(fmt).BLOCK_SIZE


def block_bytes(fmt: str) -> int:
    """Number of bytes one block of `fmt` takes (34, 18, 20, 17, 36)."""
    return format_module(fmt).BLOCK_BYTES


def bits_per_weight(fmt: str) -> float:
    """Storage cost per weight, scales included: q8_0 8.5, q4_0 4.5, q4_1 5.0, mxfp4 4.25."""
    module = format_module(fmt)
    return module.BLOCK_BYTES * 8 / module.BLOCK_SIZE


def _what(name: str | None) -> str:
    """'tensor 'blk.0.ffn_up'' or 'tensor', for error messages."""
    return f"tensor {name!r}" if name else "tensor"


# ----------------------------------------------------------------------------------------
# The packed tensor
# ----------------------------------------------------------------------------------------

@dataclass(eq=False)
class QTensor:
    """A quantized tensor: format name, logical float shape, and the packed bytes.

    >>> qt = quantize(np.ones((2, 32), np.float32), "q8_0", name="w")
    >>> qt.blocks.shape          # (2, 32 // 32 * 34)
    (2, 34)
    >>> qt.dequantize().shape
    (2, 32)

    Constructing one checks that `blocks` is C-contiguous uint8 with exactly the shape the
    format needs, so kernels that read it as (N, BB) rows can trust it.
    """

    fmt: str
    shape: tuple[int, ...]
    blocks: np.ndarray
    name: str | None = None

    def __post_init__(self) -> None:
        self.fmt = format_module(self.fmt).NAME
        try:
            self.shape = tuple(int(n) for n in self.shape)
        except (TypeError, ValueError):
            raise QuantError(f"{_what(self.name)}: shape must be a sequence of ints, got {self.shape!r}") from None
        self.validate()

    @property
    def format(self) -> ModuleType:
        """The format module (q4_0, mxfp4, ...) with BLOCK_SIZE, BLOCK_BYTES and the codecs."""
        return format_module(self.fmt)

    @property
    def nbytes(self) -> int:
        """Bytes of packed storage (scales included)."""
        return int(self.blocks.nbytes)

    @property
    def dtype(self):
        """float32: what the values decode to and what the model computes in."""
        return np.dtype(np.float32)

    @property
    def n_blocks(self) -> int:
        return self.blocks.size // self.format.BLOCK_BYTES

    def validate(self) -> QTensor:
        """Re-check that fmt, shape and blocks agree; raise QuantError naming the problem."""
        spec = format_module(self.fmt)
        what = f"{_what(self.name)} ({spec.NAME})"
        if len(self.shape) == 0:
            raise QuantError(f"{what}: shape is () but a quantized tensor needs at least one axis")
        if any(n < 0 for n in self.shape):
            raise QuantError(f"{what}: shape {self.shape} has a negative size")
        check_row_length(self.shape, spec, self.name)
        expected = packed_shape(self.shape, spec)
        if not isinstance(self.blocks, np.ndarray):
            raise QuantError(f"{what}: blocks must be a numpy uint8 array, got {type(self.blocks).__name__}")
        if self.blocks.dtype != np.uint8:
            raise QuantError(f"{what}: blocks must have dtype uint8, got {self.blocks.dtype}")
        if self.blocks.shape != expected:
            hint = ""
            if self.blocks.size == math.prod(expected):
                hint = f" (the byte count is right: use blocks.reshape({expected}))"
            raise QuantError(
                f"{what}: blocks for float shape {self.shape} must have shape {expected} "
                f"({spec.BLOCK_BYTES} bytes per {spec.BLOCK_SIZE} values), got {self.blocks.shape}{hint}"
            )
        if not self.blocks.flags.c_contiguous:
            raise QuantError(f"{what}: blocks must be C-contiguous; pass np.ascontiguousarray(blocks)")
        return self

    def dequantize(self) -> np.ndarray:
        """Decode to float32 of `self.shape`."""
        spec = self.format
        rows = self.blocks.reshape(-1, spec.BLOCK_BYTES)    # (N, BB)
        values = spec.dequantize_blocks(rows)               # (N, BB) -> (N, BS)
        return values.reshape(self.shape)                   # (N, BS) -> shape

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` of a 2-D tensor (V, C), decoded: ids (...) int -> float32 (..., C). Only those
        rows' bytes are read (an embedding lookup of a memory-mapped bf16 table)."""
        if len(self.shape) != 2:
            raise QuantError(f"{_what(self.name)}: rows() reads a 2-D table, this one has shape {self.shape}")
        ids = np.asarray(ids)
        spec = self.format
        picked = self.blocks[ids.reshape(-1)].reshape(-1, spec.BLOCK_BYTES)   # (n*C/BS, BB), the rows' blocks
        values = spec.dequantize_blocks(picked)                                # (n*C/BS, BS)
        return values.reshape(*ids.shape, self.shape[1])                       # (..., C)

    def __getitem__(self, index) -> QTensor:
        """qt[e] (or qt[i, j]): the packed sub-tensor at integer indices on the LEADING axes.

        For a stack of experts of shape (E, F, C), `qt[e]` is expert e's (F, C) QTensor. Its
        `.blocks` is `self.blocks[e]`, a view: no byte is copied or decoded.

        >>> experts = quantize(np.ones((4, 8, 32), np.float32), "q4_0")   # (E, F, C)
        >>> experts[2].shape, experts[2].blocks.shape                      # (F, C), (F, C//32*18)
        ((8, 32), (8, 18))
        >>> np.shares_memory(experts[2].blocks, experts.blocks)
        True

        Only integers are accepted, and never on the last axis: that axis is cut into blocks,
        so a slice of it is not a whole number of bytes. Dequantize first for anything else.
        """
        index = index if isinstance(index, tuple) else (index,)
        what = f"{_what(self.name)} ({self.fmt}, shape {self.shape})"
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) for i in index):
            raise QuantError(
                f"{what}: a QTensor takes only integer indices on its leading axes (like experts[e]), "
                f"got {index!r}; call .dequantize() first to slice the float values")
        if len(index) >= len(self.shape):
            raise QuantError(
                f"{what}: {len(index)} index(es) would reach the last axis, which is packed in blocks of "
                f"{self.format.BLOCK_SIZE}; index at most {len(self.shape) - 1} leading axis(es)")
        for axis, i in enumerate(index):
            if not -self.shape[axis] <= i < self.shape[axis]:
                raise IndexError(f"{what}: index {int(i)} is out of range for axis {axis} of size "
                                 f"{self.shape[axis]}")
        blocks = self.blocks[index]                         # (*lead, C//BS*BB) -> (*lead[n:], C//BS*BB), a view
        label = None
        if self.name:
            label = f"{self.name}[{', '.join(str(int(i)) for i in index)}]"
        return QTensor(self.fmt, self.shape[len(index):], blocks, label)

    def __repr__(self) -> str:
        name = f", name={self.name!r}" if self.name else ""
        return (f"QTensor(fmt={self.fmt!r}, shape={self.shape}{name}, "
                f"{self.nbytes} bytes, {bits_per_weight(self.fmt):g} bits/weight)")


# ----------------------------------------------------------------------------------------
# Public quantize / dequantize
# ----------------------------------------------------------------------------------------

def quantize(array, fmt: str, name: str | None = None) -> QTensor:
    """Quantize a float array along its last axis into `fmt` blocks.

    The bytes equal gguf.quants.quantize(array.astype(float32), GGMLQuantizationType[fmt]).
    `name` only makes error messages say which tensor was at fault.
    """
    spec = format_module(fmt)
    x = as_float32(array, name)
    if x.ndim == 0:
        raise QuantError(f"{_what(name)}: cannot quantize a 0-d scalar; give it at least one axis")
    check_row_length(x.shape, spec, name)
    check_finite(x, name)
    rows = x.reshape(-1, spec.BLOCK_SIZE)                                    # shape -> (N, BS)
    packed = spec.quantize_blocks(rows)                                      # (N, BS) -> (N, BB)
    blocks = np.ascontiguousarray(packed.reshape(packed_shape(x.shape, spec)))  # (N, BB) -> (*shape[:-1], C//BS*BB)
    return QTensor(spec.NAME, x.shape, blocks, name)


def dequantize(qt: QTensor) -> np.ndarray:
    """Decode a QTensor to float32 of qt.shape (same float bits as gguf.quants.dequantize)."""
    if not isinstance(qt, QTensor):
        raise QuantError(f"dequantize expects a QTensor, got {type(qt).__name__}")
    return qt.dequantize()


# ----------------------------------------------------------------------------------------
# Helpers shared by this file and the format modules
# ----------------------------------------------------------------------------------------

def packed_shape(shape: tuple[int, ...], spec: ModuleType) -> tuple[int, ...]:
    """(*shape[:-1], C) -> (*shape[:-1], C // BS * BB): the shape of the packed bytes."""
    return (*shape[:-1], shape[-1] // spec.BLOCK_SIZE * spec.BLOCK_BYTES)


def check_row_length(shape: tuple[int, ...], spec: ModuleType, name: str | None = None) -> None:
    """The last axis must split into whole blocks."""
    if shape[-1] % spec.BLOCK_SIZE != 0:
        raise QuantError(
            f"{_what(name)} with shape {tuple(shape)}: {spec.NAME} packs the last dimension in blocks "
            f"of {spec.BLOCK_SIZE}, but it is {shape[-1]} (not a multiple of {spec.BLOCK_SIZE}); "
            f"pad it or pick another format"
        )


def as_float32(array, name: str | None = None) -> np.ndarray:
    """np.asarray(array) as float32, refusing dtypes that are not real numbers."""
    x = np.asarray(array)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise QuantError(f"{_what(name)}: can only quantize real numbers, got dtype {x.dtype}")
    with np.errstate(over="ignore"):        # float64 beyond 3.4e38 -> inf, reported by check_finite
        return x.astype(np.float32, copy=False)


def check_finite(x: np.ndarray, name: str | None = None) -> None:
    """Quantizers assume finite input (ggml would silently produce garbage for nan/inf)."""
    bad = ~np.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise QuantError(
            f"{_what(name)} has {int(bad.sum())} non-finite value(s) after conversion to float32 "
            f"(first at index {first}: {x[first]}); quantization needs finite numbers"
        )


def as_float_blocks(x, fmt: str, block_size: int) -> np.ndarray:
    """Check the input of a format's quantize_blocks: finite floats (N, BS); return float32."""
    x = as_float32(x)
    if x.ndim != 2 or x.shape[1] != block_size:
        raise QuantError(f"{fmt}.quantize_blocks expects shape (N, {block_size}), got {x.shape}")
    check_finite(x, f"{fmt} blocks")
    return x


def as_byte_blocks(b, fmt: str, block_bytes: int) -> np.ndarray:
    """Check the input of a format's dequantize_blocks: uint8 (N, BB)."""
    b = np.asarray(b)
    if b.dtype != np.uint8:
        raise QuantError(f"{fmt}.dequantize_blocks expects uint8 bytes, got dtype {b.dtype}")
    if b.ndim != 2 or b.shape[1] != block_bytes:
        raise QuantError(f"{fmt}.dequantize_blocks expects shape (N, {block_bytes}), got {b.shape}")
    return b


def fp16_to_bytes(values: np.ndarray, fmt: str, what: str = "scale") -> np.ndarray:
    """float32 (N,) -> uint8 (N, 2): IEEE half, little-endian, round to nearest even.

    A value beyond the fp16 range (|v| >= 65520) becomes inf, exactly as ggml's
    GGML_FP32_TO_FP16 does; we keep those bytes (byte-identical output) but say so.
    """
    with np.errstate(over="ignore"):
        half = values.astype("<f2")                          # (N,) float32 -> (N,) fp16
    overflowed = np.isinf(half) & np.isfinite(values)
    if overflowed.any():
        warnings.warn(
            f"{fmt}: {int(overflowed.sum())} block {what}(s) exceed the fp16 range (max 65504) and are "
            f"stored as inf, as llama.cpp does; those blocks decode to inf/nan",
            RuntimeWarning, stacklevel=3,
        )
    return half.view(np.uint8).reshape(-1, 2)               # (N,) fp16 -> (N, 2) bytes


def fp16_from_bytes(b: np.ndarray) -> np.ndarray:
    """uint8 (N, 2) -> float32 (N,): read a little-endian IEEE half."""
    return np.ascontiguousarray(b).view("<f2")[:, 0].astype(np.float32)   # (N, 2) -> (N, 1) -> (N,)
