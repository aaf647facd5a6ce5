"""The kernels' layout of a packed weight, repacked once from the GGUF bytes of a QTensor.

Shape legend: E stacked matrices (experts; 1 for a plain matrix), O output rows, I = nb*32 input
width, nb blocks per row, J bytes per block that hold values (16 for the 4-bit formats, 32 for
q8_0), G rows per group, OG = ceil(O / G) groups, W = G*nb.

On disk and in a QTensor, a row is nb GGUF blocks one after another, each block its scale
followed by its 16 (or 32) bytes of values. That layout is fine to read but awkward to vectorize:
every 18 bytes the loop must stop, decode an fp16 scale, and start again. So the kernels read a
repacked copy, made once per tensor and cached:

    d    float32 (E, OG, W)     the block scales: d[e, og, r*nb + b] is the scale of block b of row
                                og*G + r. fp16 d for q4_0 / q4_1 / q8_0; for mxfp4 2^(e8m0 - 128),
                                the E8M0 scale halved (the value table is doubled to match, as ggml
                                does, so e8m0 = 255 stays finite)
    m    float32 (E, OG, W)     q4_1's block minimums (an empty (0, 0, 0) array for the others)
    qs   (E, OG, J, W)          qs[e, og, j, r*nb + b] is byte j of that block. uint8 for the 4-bit
                                formats (low nibble = element j, high nibble = element j + 16), int8
                                for q8_0 (element j)

With the block index last, the innermost loop of a kernel runs over W = G*nb contiguous bytes
doing the same thing to each, which the compiler turns into SIMD instructions. G rows are
interleaved so that this loop is long enough (W >= 128) even for narrow matrices: a 512-wide
row has only 16 blocks, so 8 rows share one loop. Rows past O (padding of the last group) are zero.

The input axis is visited in "kernel order": position p = (i % 32) * nb + i // 32 of x holds
element i. `to_kernel_order(x)` makes that copy of the activations once per call (it is small),
so the weights are never reordered at run time.

`pack(qt)` returns the PackedWeight of a QTensor, from a cache that lives as long as the QTensor's
bytes do. QTensors are treated as immutable: writing into `qt.blocks` in place is not noticed.
"""
from __future__ import annotations

import functools
import os
import sys
import weakref
from dataclasses import dataclass, field

import numpy as np

from minimoe.errors import MinimoeError
from minimoe.quant import QTensor
from minimoe.quant.qtensor import fp16_from_bytes

BLOCK = 32                                   # values per block, in every format packed here
PACKED_FORMATS = ("q4_0", "q4_1", "q8_0", "mxfp4")


class KernelInputError(MinimoeError, ValueError):
    """A kernel was handed arrays of the wrong shape or dtype; the message names which and why."""


@functools.lru_cache(maxsize=None)
def group_rows(nb: int) -> int:
    """G, the rows interleaved per group: enough that G*nb >= 128 bytes per inner loop (at most 16)."""
    G = 1
    while G * nb < 128 and G < 16:
        G *= 2
    return G


@dataclass(frozen=True)
class PackedWeight:
    """A packed weight in the kernels' layout (see the module docstring).

    shape is the logical float shape: (O, I) for one matrix, (E, O, I) for a stack of experts.
    """
    fmt: str
    shape: tuple
    d: np.ndarray        # float32 (E, OG, G*nb)
    m: np.ndarray        # float32 (E, OG, G*nb) for q4_1, else (0, 0, 0)
    qs: np.ndarray       # uint8 / int8 (E, OG, J, G*nb)
    G: int               # rows per group
    gguf_nbytes: int     # bytes of the GGUF blocks it came from (what "weight bytes" means in benchmarks)

    @property
    def stacked(self) -> bool:
        return len(self.shape) == 3

    @property
    def rows(self) -> int:
        """O, the output rows of each matrix."""
        return self.shape[-2]

    @property
    def n_blocks(self) -> int:
        return self.shape[-1] // BLOCK

    def __getitem__(self, e: int) -> PackedWeight:
        """Matrix e of a stack (E, O, I): a view, nothing copied."""
        if not self.stacked:
            raise KernelInputError(f"PackedWeight of shape {self.shape} is one matrix; only a stack "
                                   f"(E, O, I) can be indexed")
        E = self.shape[0]
        if not -E <= e < E:
            raise IndexError(f"expert index {e} out of range for a stack of {E}")
        e = int(e) % E
        sl = slice(e, e + 1)
        m = self.m[sl] if self.m.size else self.m
        return PackedWeight(self.fmt, self.shape[1:], self.d[sl], m, self.qs[sl], self.G, self.gguf_nbytes // E)

    def ungrouped(self, name: str) -> np.ndarray:
        """d, m or qs with one row per output row: (E, O, nb) or (E, O, J, nb). For the NumPy twins."""
        a = getattr(self, name)
        E, OG, nb = a.shape[0], a.shape[1], self.n_blocks
        if name == "qs":
            J = a.shape[2]
            a = a.reshape(E, OG, J, self.G, nb).transpose(0, 1, 3, 2, 4).reshape(E, OG * self.G, J, nb)
        elif a.size:
            a = a.reshape(E, OG * self.G, nb)
        return a[:, :self.rows]

    def validate(self) -> PackedWeight:
        """Check that the arrays agree with each other and with `shape`. The kernels trust them
        (Numba checks no bounds, so a mismatch would read or write outside the arrays), so the
        checked entry points call this on every call: after the first success it costs a dictionary
        lookup (the fields of a frozen PackedWeight cannot be replaced)."""
        if self.__dict__.get("_valid"):
            return self
        fmt, shape, d, m, qs, G = self.fmt, self.shape, self.d, self.m, self.qs, self.G
        if fmt not in PACKED_FORMATS:
            raise KernelInputError(f"PackedWeight: format {fmt!r} has no fused kernel "
                                   f"(fused: {', '.join(PACKED_FORMATS)})")
        E, O, I = (1, *shape) if type(shape) is tuple and len(shape) == 2 else (
            shape if type(shape) is tuple and len(shape) == 3 else (0, 0, 0))
        if not (type(E) is int and type(O) is int and type(I) is int and E > 0 and O > 0 and I > 0):
            raise KernelInputError(f"PackedWeight: shape must be (O, I) or (E, O, I) of positive ints, "
                                   f"found {shape!r}")
        if I % BLOCK:
            raise KernelInputError(f"{self._what()}: input width {I} is not a positive multiple of {BLOCK}")
        if not (type(d) is np.ndarray and type(m) is np.ndarray and type(qs) is np.ndarray):
            raise KernelInputError(f"{self._what()}: d, m and qs must be numpy arrays, found "
                                   f"{type(d).__name__}, {type(m).__name__}, {type(qs).__name__}")
        if not (d.flags.c_contiguous and m.flags.c_contiguous and qs.flags.c_contiguous):
            raise KernelInputError(f"{self._what()}: d, m and qs must be C-contiguous")
        nb = I // BLOCK
        if type(G) is not int or G != group_rows(nb):
            raise KernelInputError(f"{self._what()}: rows per group must be {group_rows(nb)}, found {G!r}")
        OG, W = -(-O // G), G * nb
        J, want_q = (32, _I8) if fmt == "q8_0" else (16, _U8)
        if d.shape != (E, OG, W) or d.dtype != _F32:
            raise KernelInputError(f"{self._what()}: scales must be float32 {(E, OG, W)}, found "
                                   f"{d.dtype} {d.shape}")
        if qs.shape != (E, OG, J, W) or qs.dtype != want_q:
            raise KernelInputError(f"{self._what()}: values must be {want_q} {(E, OG, J, W)}, found "
                                   f"{qs.dtype} {qs.shape}")
        want_m = (E, OG, W) if fmt == "q4_1" else (0, 0, 0)
        if m.shape != want_m or m.dtype != _F32:
            raise KernelInputError(f"{self._what()}: minimums must be float32 {want_m}, found "
                                   f"{m.dtype} {m.shape}")
        self.__dict__["_valid"] = True
        return self

    def _what(self) -> str:
        return f"packed {self.fmt} weight of shape {self.shape}"


_F32, _I8, _U8 = np.dtype(np.float32), np.dtype(np.int8), np.dtype(np.uint8)


# ----------------------------------------------------------------------------------------------
# GGUF blocks -> kernel layout
# ----------------------------------------------------------------------------------------------

def repack(qt: QTensor) -> PackedWeight:
    """Repack a QTensor's GGUF blocks (read-only) into a new PackedWeight."""
    if qt.fmt not in PACKED_FORMATS:
        raise KernelInputError(f"no fused kernel for format {qt.fmt!r} (fused: {', '.join(PACKED_FORMATS)}); "
                               f"use the reference path qt.dequantize()")
    qt.validate()
    if len(qt.shape) not in (2, 3):
        raise KernelInputError(f"{qt!r}: the kernels take a matrix (O, I) or a stack (E, O, I), "
                               f"found {len(qt.shape)} axes")
    E, O, I = (1, *qt.shape) if len(qt.shape) == 2 else qt.shape
    nb = I // BLOCK
    if nb == 0:
        raise KernelInputError(f"{qt!r}: input width must be at least one block of {BLOCK}")
    G = group_rows(nb)
    OG = -(-O // G)
    BB = qt.format.BLOCK_BYTES
    blocks = qt.blocks.reshape(E, O, nb, BB)
    if OG * G != O:                                             # pad the last group with zero rows
        blocks = np.concatenate([blocks, np.zeros((E, OG * G - O, nb, BB), np.uint8)], axis=1)
    blocks = blocks.reshape(E * OG * G * nb, BB)                # one GGUF block a row
    m = np.zeros((0, 0, 0), np.float32)
    if qt.fmt == "mxfp4":
        e8m0 = blocks[:, 0].astype(np.int32)
        d = np.ldexp(np.float32(1), e8m0 - 128).astype(np.float32)   # 2^(e-128): the halved scale
        vals = blocks[:, 1:]                                    # (.., 16)
    else:
        d = fp16_from_bytes(blocks[:, 0:2])                     # fp16 -> float32, exact
        if qt.fmt == "q4_1":
            m = fp16_from_bytes(blocks[:, 2:4]).reshape(E, OG, G * nb)
            vals = blocks[:, 4:]
        else:
            vals = blocks[:, 2:]                                # q4_0: (.., 16); q8_0: (.., 32)
    J = vals.shape[1]
    # (E, OG, G, nb, J) -> (E, OG, J, G, nb): byte j of every block of the group's rows, contiguous
    qs = vals.reshape(E, OG, G, nb, J).transpose(0, 1, 4, 2, 3).reshape(E, OG, J, G * nb)
    qs = np.ascontiguousarray(qs)
    if qt.fmt == "q8_0":
        qs = qs.view(np.int8)
    pw = PackedWeight(qt.fmt, qt.shape, d.reshape(E, OG, G * nb), np.ascontiguousarray(m), qs, G, qt.nbytes)
    return pw.validate()


def to_kernel_order(x: np.ndarray) -> np.ndarray:
    """x (R, I) -> xk (R, 32, nb), xk[r, j, b] = x[r, b*32 + j], a C-contiguous float32 copy."""
    R, I = x.shape
    return np.ascontiguousarray(x.reshape(R, I // BLOCK, BLOCK).transpose(0, 2, 1), dtype=np.float32)


def from_kernel_order(wk: np.ndarray) -> np.ndarray:
    """The inverse for weights: wk (O, 32*nb) in kernel order -> w (O, I) in the original order."""
    O, I = wk.shape
    return wk.reshape(O, BLOCK, I // BLOCK).transpose(0, 2, 1).reshape(O, I)


# ----------------------------------------------------------------------------------------------
# The cache: one PackedWeight per QTensor (and views of it for each expert)
# ----------------------------------------------------------------------------------------------

_cache: dict[tuple, tuple[weakref.ref, PackedWeight]] = {}


def _root(a: np.ndarray) -> np.ndarray:
    """The outermost ndarray `a` is a view of (the one whose memory it shares)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _key(fmt: str, shape: tuple, blocks: np.ndarray) -> tuple:
    return (fmt, tuple(shape), blocks.__array_interface__["data"][0], blocks.shape)


def _remember(key: tuple, blocks: np.ndarray, pw: PackedWeight) -> None:
    root = _root(blocks)
    _cache[key] = (weakref.ref(root), pw)
    weakref.finalize(root, _cache.pop, key, None)              # forget it when the bytes go


def pack(qt: QTensor) -> PackedWeight:
    """The cached PackedWeight of `qt`; repacked on first use.

    An expert's QTensor `stack[e]` (a view of a stack's bytes) gets a view of the stack's packed
    arrays, so the stack is repacked once, not once per expert."""
    mine = qt.__dict__.get("_packed")                  # (its blocks, their PackedWeight), from the last call
    if mine is not None and mine[0] is qt.blocks:      # the same bytes: a dictionary lookup, no more
        return mine[1]
    pw = _pack(qt)
    qt.__dict__["_packed"] = (qt.blocks, pw)
    return pw


def _pack(qt: QTensor) -> PackedWeight:
    key = _key(qt.fmt, qt.shape, qt.blocks)
    hit = _cache.get(key)
    if hit is not None and hit[0]() is _root(qt.blocks):
        return hit[1]
    parent = _stack_of(qt)
    if parent is not None:
        stack, e = parent
        pw = pack(stack)[e]
    else:
        pw = repack(qt)
        if len(qt.shape) == 3:                                 # register every expert's view too
            per = qt.blocks[0].nbytes
            base = qt.blocks.__array_interface__["data"][0]
            for e in range(qt.shape[0]):
                k = (qt.fmt, tuple(qt.shape[1:]), base + e * per, qt.blocks.shape[1:])
                _remember(k, qt.blocks, pw[e])
    _remember(key, qt.blocks, pw)
    return pw


def _stack_of(qt: QTensor):
    """If qt.blocks is matrix e of a C-contiguous (E, O, bytes) array, that stack as a QTensor and e."""
    if len(qt.shape) != 2:
        return None
    root = _root(qt.blocks)
    if (root.ndim != 3 or root.dtype != np.uint8 or not root.flags.c_contiguous
            or root.shape[1:] != qt.blocks.shape):
        return None
    offset = qt.blocks.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    per = qt.blocks.nbytes
    if offset % per:
        return None
    stack = QTensor(qt.fmt, (root.shape[0], *qt.shape), root)
    return stack, offset // per


# ----------------------------------------------------------------------------------------------
# The repack budget: how many bytes of kernel copies large weights may add to the process
# ----------------------------------------------------------------------------------------------
#
# A repacked copy (a PackedWeight, and on the int8 decode path its quad words, int8matmul.py) is
# about as big as the GGUF bytes it comes from, twice as big with the quad words. A model quantized
# while loading holds its packed weights in memory, so repacking all of them would double or
# triple what decoding needs: OLMoE-1B-7B at q8_0 holds 7.5 GB and its copies add 15 more. So a
# large weight (kernels/__init__.py's STORED_MIN_BYTES) is repacked only while the copies made so
# far, with its own, fit the budget; past it, matmul_leaf multiplies it from its GGUF blocks
# (stored_gemv.py: slower, no copy) and one line on stderr says so. Weights below that size are
# always repacked and not counted. The budget is, in this order of precedence:
#
#     minimoe.set_repack_budget(nbytes)      # or None: back to the default
#     MINIMOE_REPACK_BUDGET=nbytes           # 0: never repack a large weight
#     REPACK_SHARE of the memory available when the first large weight is packed (MemAvailable)

REPACK_SHARE = 0.5       # leaves the other half for the KV cache, activations and other programs


@dataclass
class RepackBudget:
    """The process's repack budget and what has been charged to it (see above)."""
    limit: int | None = None      # bytes; None until set or first needed
    used: int = 0                 # bytes of kernel copies of large weights made so far
    refused: dict = field(default_factory=dict)   # tensor name -> its copies' bytes, read as stored
    generation: int = 0           # bumped by set_repack_budget: earlier decisions are taken again


_budget = RepackBudget()


def set_repack_budget(nbytes: int | None) -> int | None:
    """Bytes of kernel copies that large packed weights held in memory may take (None: the
    default, REPACK_SHARE of the available memory). Returns the previous setting. Weights
    already repacked stay so; weights refused before are considered again."""
    if nbytes is not None and (isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer))
                               or nbytes < 0):
        raise KernelInputError(f"set_repack_budget: nbytes must be a number of bytes >= 0 or None, "
                               f"found {nbytes!r}")
    previous = _budget.limit
    _budget.limit = None if nbytes is None else int(nbytes)
    _budget.refused = {}
    _budget.generation += 1
    return previous


def repack_budget() -> int:
    """The budget in bytes, fixed on first use from $MINIMOE_REPACK_BUDGET or the memory available."""
    if _budget.limit is None:
        env = os.environ.get("MINIMOE_REPACK_BUDGET", "").strip()
        if env:
            try:
                _budget.limit = int(float(env))
            except ValueError:
                _budget.limit = -1
            if _budget.limit < 0:
                raise KernelInputError(f"$MINIMOE_REPACK_BUDGET must be a number of bytes >= 0 "
                                       f"(0: never repack a large weight), found {env!r}")
        else:
            _budget.limit = int(REPACK_SHARE * available_memory())
    return _budget.limit


def available_memory() -> int:
    """Bytes of memory the system can give without swapping: MemAvailable of /proc/meminfo (free
    memory plus the page cache it can drop), else the free pages os.sysconf reports."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024              # "MemAvailable:  123 kB"
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def kernel_copy_bytes(qt: QTensor, int8: bool) -> int:
    """Bytes of the copies the kernels make of `qt`: its PackedWeight (d, m, qs, padded to whole
    groups) and, on the int8 decode path, the quad words (int8matmul.quad_words)."""
    E, O, I = (1, *qt.shape) if len(qt.shape) == 2 else qt.shape
    nb = I // BLOCK
    G = group_rows(nb)
    OG, W = -(-O // G), G * nb
    J = 32 if qt.fmt == "q8_0" else 16
    n = E * OG * W * (4 * (2 if qt.fmt == "q4_1" else 1) + J)       # d (and m) float32, qs
    if int8:
        from minimoe.kernels.vnni import LANES
        n += E * OG * J * (-(-W // LANES) * LANES)                  # qw, W padded to whole lanes
    return n


def may_repack(qt: QTensor) -> bool:
    """Whether the kernels may make their copy of the large weight `qt` (one already made: yes).
    The answer is kept with the QTensor, and the bytes charged to the budget, when it is yes."""
    said = qt.__dict__.get("_repack")
    if said is not None and said[0] == _budget.generation:
        return said[1]
    if qt.__dict__.get("_packed") is not None or _cache.get(_key(qt.fmt, qt.shape, qt.blocks)) is not None:
        ok = True                                                   # its copy exists already
    else:
        from minimoe.kernels.qmatmul import int8_activations
        cost = kernel_copy_bytes(qt, int8_activations())
        ok = _budget.used + cost <= repack_budget()
        if ok:
            _budget.used += cost
            weakref.finalize(_root(qt.blocks), _release, cost)      # its copies go with its bytes
        else:
            _refuse(qt, cost)
    qt.__dict__["_repack"] = (_budget.generation, ok)
    return ok


def _release(nbytes: int) -> None:
    _budget.used -= nbytes


def _refuse(qt: QTensor, cost: int) -> None:
    """Note a weight read as stored; the first one of a budget is told on stderr, in one line."""
    _budget.refused[qt.name or f"a {qt.fmt} weight of shape {qt.shape}"] = cost
    if len(_budget.refused) == 1:
        print(f"minimoe: the kernels' copy of {qt.name or 'a weight'} ({qt.fmt} {qt.shape}, "
              f"{cost / 1e9:.2f} GB) would pass the repack budget ({_budget.used / 1e9:.2f} of "
              f"{repack_budget() / 1e9:.2f} GB used), so it and any later weight past the budget are "
              f"read as stored: a slower decode, no copy. minimoe.set_repack_budget(bytes) or "
              f"MINIMOE_REPACK_BUDGET=bytes changes it (docs/checkpoints.md)", file=sys.stderr)


def repack_report() -> dict:
    """{"budget", "used", "refused": {tensor name: bytes its copies would take}} (bench big prints it)."""
    return {"budget": _budget.limit, "used": _budget.used, "refused": dict(_budget.refused)}


def clear_cache() -> None:
    """Forget every repacked weight (benchmarks use it to time a cold start)."""
    _cache.clear()


def int_range(a: np.ndarray) -> tuple[int, int]:
    """(min, max) of a non-empty integer array, as Python ints. A decode step's arrays hold a few
    values, which Python compares faster than two NumPy reductions (a microsecond or more each)."""
    if a.size <= 16:
        values = a.ravel().tolist()
        return min(values), max(values)
    return int(a.min()), int(a.max())


def check_experts(experts, R: int, E: int, stacked: bool, what: str):
    """The `experts` argument of a matmul over R rows of x: None for one matrix; for a stack of E
    matrices, int64 (R,) with every index in 0..E-1 (one matrix per row)."""
    if experts is None:
        if stacked:
            raise KernelInputError(f"{what}: a stack of matrices needs `experts`, one index per row")
        return None
    experts = np.asarray(experts)
    if experts.shape != (R,) or experts.dtype != np.int64:
        raise KernelInputError(f"{what}: experts must be int64 of shape ({R},), one per row of x, "
                               f"found {experts.dtype} {experts.shape}")
    if R:
        lo, hi = int_range(experts)
        if lo < 0 or hi >= E:
            raise KernelInputError(f"{what}: experts must lie in 0..{E - 1}, found {lo}..{hi}")
    return experts
