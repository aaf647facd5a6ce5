"""Which pages of a memory-mapped tensor this process holds, and giving them back.

A memory-mapped weight (minimoe/io/safetensors_file.py, map_tensors) costs no memory until it is
read: the first read of a page (4 KiB) faults it in from the file, and from then on it counts in
the process's resident set (RSS) until the kernel or the process drops it. Two tools follow that:

    resident_bytes(arr)   bytes of `arr` whose pages are mapped into this process now, read from
                          /proc/self/pagemap (bit 63 of each page's 8-byte entry: "present").
                          Linux only; None elsewhere. This is what "decoding one token pages in only
                          the routed experts" is measured with (tests/test_mmap_load.py).
    release(arr)          madvise(MADV_DONTNEED) over `arr`'s pages: the process lets go of them
                          (its RSS drops); the file's bytes stay in the page cache, and a later
                          read faults them in again. The loader calls it after reading a tensor it
                          only needed once (a finiteness scan, a source it quantized), so that
                          loading never holds more than one tensor's pages at a time.

release() is only for pages nobody has written: on a copy-on-write mapping (np.memmap mode "c")
a page written to would be dropped with the write. The loader releases before it returns the model.
"""
from __future__ import annotations

import ctypes
import mmap
import os

import numpy as np

try:                                                   # NumPy 2 moved it
    from numpy.lib.array_utils import byte_bounds
except ImportError:                                    # pragma: no cover (NumPy 1.x)
    from numpy import byte_bounds

PAGE = mmap.PAGESIZE
_PAGEMAP = "/proc/self/pagemap"


def _span(arr: np.ndarray) -> tuple[int, int]:
    """[first page, end page) addresses covering the bytes of `arr` (a view: its byte bounds)."""
    lo, hi = byte_bounds(arr)
    return lo - lo % PAGE, hi + (-hi % PAGE)


def resident_bytes(arr: np.ndarray) -> int | None:
    """Bytes of the pages under `arr` that are present in this process (a multiple of the page
    size, so up to two pages more than arr.nbytes), or None where /proc/self/pagemap is missing."""
    if arr.nbytes == 0:
        return 0
    if not os.path.exists(_PAGEMAP):
        return None
    lo, hi = _span(arr)
    with open(_PAGEMAP, "rb") as f:
        f.seek(lo // PAGE * 8)                                   # one uint64 per virtual page
        entries = np.frombuffer(f.read((hi - lo) // PAGE * 8), dtype="<u8")   # (pages,)
    return int(np.count_nonzero(entries >> np.uint64(63))) * PAGE


def is_mapped(arr) -> bool:
    """Whether `arr` (or the array it is a view of) lives in a memory-mapped file."""
    while isinstance(arr, np.ndarray):
        if isinstance(arr, np.memmap) and getattr(arr, "_mmap", None) is not None:
            return True
        arr = arr.base
    return isinstance(arr, mmap.mmap)


def release(arr) -> None:
    """Drop this process's pages under a memory-mapped `arr` (nothing for an in-memory array)."""
    if not (isinstance(arr, np.ndarray) and arr.nbytes and is_mapped(arr)):
        return
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None:                                           # (not Linux/macOS: keep them)
        return
    lo, hi = _span(arr)
    _libc().madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), ctypes.c_int(advice))


_LIBC = []


def _libc():
    if not _LIBC:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _LIBC.append(libc)
    return _LIBC[0]
