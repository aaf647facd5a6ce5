"""minimoe.quant: packed 8-bit and 4-bit weight formats, byte-identical with llama.cpp's GGUF.

    >>> import numpy as np
    >>> from minimoe import quant
    >>> w = np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32)   # (F, C)
    >>> qt = quant.quantize(w, "q4_0", name="ffn_up")
    >>> qt.blocks.shape                  # (F, C // 32 * 18): the bytes a GGUF file holds
    (64, 72)
    >>> w_hat = qt.dequantize()          # (F, C) float32

Formats (one module each, the byte layout drawn at the top of the file):
    q8_0   34 bytes / 32 values  8.5  bits per weight   GGUF type 8
    q4_0   18 bytes / 32 values  4.5                    GGUF type 2
    q4_1   20 bytes / 32 values  5.0                    GGUF type 3
    mxfp4  17 bytes / 32 values  4.25                   GGUF type 39 (gpt-oss experts)
    nf4    36 bytes / 64 values  4.5                    QLoRA / bitsandbytes, no GGUF type
    q2_k   84 bytes / 256 values 2.625                  GGUF type 10 (K-quant super-block)
    q3_k  110 bytes / 256 values 3.4375                 GGUF type 11
    q4_k  144 bytes / 256 values 4.5                    GGUF type 12
    q5_k  176 bytes / 256 values 5.5                    GGUF type 13
    q6_k  210 bytes / 256 values 6.5625                 GGUF type 14
    bf16    2 bytes / 1 value    16                     unpacked 16-bit floats, as checkpoints store
    fp16    2 bytes / 1 value    16                     them (bf16.py): a memory-mapped weight as is
(the K-quants share k_quants.py: the 256-weight super-block and ggml's scale searches)
See docs/formats.md.
"""
from . import bf16, fp16, mxfp4, nf4, q2_k, q3_k, q4_0, q4_1, q4_k, q5_k, q6_k, q8_0
from .mxfp4 import from_hf_mxfp4, to_hf_mxfp4
from .qtensor import (
    FORMATS,
    QTensor,
    QuantError,
    bits_per_weight,
    block_bytes,
    block_size,
    dequantize,
    format_module,
    quantize,
)

for _module in (q8_0, q4_0, q4_1, mxfp4, nf4, q2_k, q3_k, q4_k, q5_k, q6_k, bf16, fp16):
    FORMATS[_module.NAME] = _module
del _module

__all__ = [
    "FORMATS", "QTensor", "QuantError", "bits_per_weight", "block_bytes", "block_size",
    "dequantize", "format_module", "from_hf_mxfp4", "quantize", "to_hf_mxfp4",
]
