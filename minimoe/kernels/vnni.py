"""One CPU instruction, reached from Numba: the integer dot product of 4 bytes (x86 VNNI `vpdpbusd`).

Shape legend: L lanes per call (16 for 512-bit vectors, 8 for 256-bit), each lane a 32-bit word
that holds 4 bytes.

What the instruction computes, lane by lane (l = 0 .. L-1), with a = 4 unsigned bytes and b = 4
signed bytes packed into each 32-bit word:

    acc[l] += a[l].byte0 * b[l].byte0 + a[l].byte1 * b[l].byte1
            + a[l].byte2 * b[l].byte2 + a[l].byte3 * b[l].byte3        (uint8 x int8, summed in int32)

64 multiply-adds in one instruction on 512-bit vectors (AVX512-VNNI: Intel since Ice Lake, AMD
Zen 4 and 5), 32 on 256-bit ones (AVX-VNNI: Intel Alder Lake on; or AVX512-VNNI with AVX512VL).
A float32 FMA does 16 (or 8). llama.cpp multiplies its quantized weights by int8-quantized
activations with exactly this instruction (`_mm256_dpbusd_epi32`); arm64's `sdot` is the same idea
with both operands signed.

Numba has no function for it, but `numba.extending.intrinsic` lets Python write the few lines of
LLVM IR that call LLVM's own intrinsic `llvm.x86.avx512.vpdpbusd.512` (or `.256`): load the
accumulator and the two operands from arrays, one call, store the accumulator. After Numba inlines
it into a kernel's loop, the loads and the store fold away and one `vpdpbusd` instruction is left.

`dot4_portable` computes the same thing with plain integer loops, which LLVM turns into ordinary
SIMD multiplies and adds on any CPU (arm64, older x86, a CPU with VNNI switched off). `dot4_numpy`
is the twin. `int8_dot()` says which one this CPU runs (see there); an LLVM that meets the
intrinsic on a CPU without the instruction stops the process, so the choice is made from the
CPU's features before anything is compiled.

On arm64 the same idea is `sdot` (llvm.aarch64.neon.sdot, the "dotprod" feature: Apple M1 on,
AWS Graviton 2 on, Neoverse), with both operands SIGNED. `dot4_sdot` keeps the contract above with
one extra step: flipping the top bit of each unsigned byte a makes the signed byte a - 128, so

    sum_t a_t b_t = sdot(a ^ 0x80, b) + 128 * sum_t b_t,     and sum_t b_t = sdot(0x01010101, b)

(two sdot instructions per 4 lanes, exact in int32). minimoe was built on x86 machines: the test
suite compiles `sdot_ir`'s IR for an arm64 target and checks the instruction is emitted, and checks
the identity above with NumPy (`dot4_sdot_numpy`); it has not been run on an arm64 CPU.
"""
from __future__ import annotations

import os

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from minimoe.errors import MinimoeError

LANES = 16           # words per call of every dot4 (the 256-bit form makes two instructions of it)
DOT4_CHOICES = ("auto", "vnni512", "vnni256", "sdot", "portable")


def dot4_numpy(acc, i, a, ia, b, ib):
    """The twin: acc[i + l] += sum_t a[ia + l].byte_t * b[ib + l].byte_t for l < LANES; a uint32
    words of 4 unsigned bytes, b int32 words of 4 signed bytes (little-endian: byte 0 lowest)."""
    ua = a[ia:ia + LANES].view(np.uint8).reshape(LANES, 4).astype(np.int32)   # (L, 4) 0..255
    sb = b[ib:ib + LANES].view(np.int8).reshape(LANES, 4).astype(np.int32)    # (L, 4) -128..127
    acc[i:i + LANES] += (ua * sb).sum(axis=1)                                 # (L,)


def dot4_sdot_numpy(acc, i, a, ia, b, ib):
    """What dot4_sdot computes, step by step, in NumPy: signed products of a ^ 0x80 (= a - 128) and
    b, plus 128 times the sum of b's bytes. Equal to dot4_numpy (the tests check it)."""
    sa = (a[ia:ia + LANES] ^ np.uint32(0x80808080)).view(np.int8).reshape(LANES, 4).astype(np.int32)
    sb = b[ib:ib + LANES].view(np.int8).reshape(LANES, 4).astype(np.int32)
    acc[i:i + LANES] += (sa * sb).sum(axis=1) + 128 * sb.sum(axis=1)


@njit(inline="always")
def dot4_portable(acc, i, a, ia, b, ib):
    """The same with plain integer loops (no special instruction): any CPU."""
    ua = a.view(np.uint8)                           # the words' bytes: word w is bytes 4w .. 4w+3
    sb = b.view(np.int8)
    for l in range(LANES):
        s = np.int32(0)
        for t in range(4):
            s += np.int32(ua[4 * (ia + l) + t]) * np.int32(sb[4 * (ib + l) + t])
        acc[i + l] += s


def _words_at(context, builder, signature, args, k: int, index: int, words, block: int):
    """In an intrinsic's codegen: a pointer to vector `block` of type `words` (<n x i32>) in array
    argument k, counted from the word index in argument `index`."""
    from llvmlite import ir
    ary = context.make_array(signature.args[k])(context, builder, args[k])
    first = builder.bitcast(builder.gep(ary.data, [args[index]]), words.as_pointer())
    return builder.gep(first, [ir.Constant(ir.IntType(64), block)])


def _vpdpbusd(width: int):
    """An intrinsic `f(acc, i, a, ia, b, ib)` doing acc[i:i+LANES] += dot4(a[ia:], b[ib:]) with
    `llvm.x86.avx512.vpdpbusd.<width>` (one instruction for 512, two for 256). The arrays must be
    C-contiguous; i, ia, ib are word indices. No bounds are checked (the kernels size the arrays)."""
    import llvmlite.binding as llvm
    from llvmlite import ir
    n = width // 32                                  # int32 lanes per instruction: 16 or 8
    i32, i8 = ir.IntType(32), ir.IntType(8)
    words = ir.VectorType(i32, n)
    # LLVM changed the operands' type from <n x i32> to <4n x i8> (LLVM 22 takes both)
    byte_operands = llvm.llvm_version_info >= (22,)
    operand = ir.VectorType(i8, 4 * n) if byte_operands else words
    name = f"llvm.x86.avx512.vpdpbusd.{width}"

    @intrinsic
    def vpdpbusd(typingctx, acc, i, a, ia, b, ib):
        sig = types.void(acc, i, a, ia, b, ib)

        def codegen(context, builder, signature, args):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(words, [words, operand, operand]), name)
            for half in range(LANES // n):           # 1 for 512 bits, 2 for 256
                p_acc, p_a, p_b = (_words_at(context, builder, signature, args, k, k + 1, words, half)
                                   for k in (0, 2, 4))
                s = builder.load(p_acc, align=4)
                va, vb = builder.load(p_a, align=4), builder.load(p_b, align=4)
                if byte_operands:
                    va, vb = builder.bitcast(va, operand), builder.bitcast(vb, operand)
                builder.store(builder.call(fn, [s, va, vb]), p_acc, align=4)
            return context.get_dummy_value()

        if not all(isinstance(t, types.Array) and t.layout == "C" for t in (acc, a, b)):
            return None
        return sig, codegen

    return vpdpbusd


_vpdpbusd_512 = _vpdpbusd(512)
_vpdpbusd_256 = _vpdpbusd(256)


def sdot_ir(builder, acc, a, b):
    """The arm64 instructions of one dot4 step on 4 lanes, as LLVM IR: acc, a, b are <4 x i32>
    values (a's bytes unsigned, b's signed); returns acc + the lane-wise sums of a_t * b_t."""
    from llvmlite import ir
    i32, i8 = ir.IntType(32), ir.IntType(8)
    words, bytes16 = ir.VectorType(i32, 4), ir.VectorType(i8, 16)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(words, [words, bytes16, bytes16]),
                                        "llvm.aarch64.neon.sdot.v4i32.v16i8")
    splat = lambda v: ir.Constant(words, [v] * 4)                              # noqa: E731
    signed_a = builder.bitcast(builder.xor(a, splat(0x80808080)), bytes16)      # a - 128, as int8
    vb = builder.bitcast(b, bytes16)
    s = builder.call(fn, [acc, signed_a, vb])                                  # acc + sum (a - 128) b
    sum_b = builder.call(fn, [splat(0), builder.bitcast(splat(0x01010101), bytes16), vb])
    return builder.add(s, builder.shl(sum_b, splat(7)))                        # + 128 sum b


@intrinsic
def _sdot(typingctx, acc, i, a, ia, b, ib):
    """acc[i:i+LANES] += dot4(a[ia:], b[ib:]) with arm64 sdot (4 lanes per instruction)."""
    from llvmlite import ir
    words = ir.VectorType(ir.IntType(32), 4)
    sig = types.void(acc, i, a, ia, b, ib)

    def codegen(context, builder, signature, args):
        for quarter in range(LANES // 4):
            p_acc, p_a, p_b = (_words_at(context, builder, signature, args, k, k + 1, words, quarter)
                               for k in (0, 2, 4))
            total = sdot_ir(builder, builder.load(p_acc, align=4), builder.load(p_a, align=4),
                            builder.load(p_b, align=4))
            builder.store(total, p_acc, align=4)
        return context.get_dummy_value()

    if not all(isinstance(t, types.Array) and t.layout == "C" for t in (acc, a, b)):
        return None
    return sig, codegen


@njit(inline="always")
def dot4_vnni512(acc, i, a, ia, b, ib):
    """dot4 with AVX512-VNNI: one vpdpbusd on 512-bit vectors."""
    _vpdpbusd_512(acc, i, a, ia, b, ib)


@njit(inline="always")
def dot4_vnni256(acc, i, a, ia, b, ib):
    """dot4 with AVX-VNNI (or AVX512-VNNI + AVX512VL): two vpdpbusd on 256-bit vectors."""
    _vpdpbusd_256(acc, i, a, ia, b, ib)


@njit(inline="always")
def dot4_sdot(acc, i, a, ia, b, ib):
    """dot4 on arm64 with the dotprod feature: 8 sdot instructions for 16 lanes (see sdot_ir)."""
    _sdot(acc, i, a, ia, b, ib)


DOT4 = {"vnni512": dot4_vnni512, "vnni256": dot4_vnni256, "sdot": dot4_sdot, "portable": dot4_portable}


# ----------------------------------------------------------------------------------------------
# Which one this CPU runs
# ----------------------------------------------------------------------------------------------

def cpu_features() -> set:
    """The CPU features Numba compiles for: its configured feature string (NUMBA_CPU_FEATURES, or
    what minimoe's configure_numba set) when there is one, else the host's, as LLVM names them."""
    import numba
    import llvmlite.binding as llvm
    configured = numba.config.CPU_FEATURES
    if configured:
        return {f[1:] for f in configured.split(",") if f.startswith("+")}
    if numba.config.CPU_NAME and numba.config.CPU_NAME != "host":
        return set()                      # a named CPU without features: assume the least
    return {name for name, on in llvm.get_host_cpu_features().items() if on}


_chosen: dict = {}


def int8_dot(features: set | None = None) -> str:
    """"vnni512", "vnni256", "sdot" or "portable": the dot4 this CPU runs, chosen from its features
    (`features` as cpu_features() gives them; by default this CPU's, read once). $MINIMOE_INT8_DOT
    names one instead ("auto" is the default); naming a VNNI form the CPU lacks is refused rather
    than crashing LLVM. Under NUMBA_DISABLE_JIT=1 the kernels run as Python: "portable", so
    that "auto" activations are float there and a debugger steps into qmatmul.py's kernels."""
    if features is None:                 # this CPU: decided once per Numba CPU setting, on first use
        import numba
        if numba.config.DISABLE_JIT:     # kernels run as Python (to step through): no instruction
            return "portable"
        key = (numba.config.CPU_NAME, numba.config.CPU_FEATURES)
        hit = _chosen.get(key)
        if hit is None:
            hit = _chosen[key] = int8_dot(cpu_features())
        return hit
    can = ["portable"]
    if "avx512vnni" in features and "avx512vl" in features and "avx512bw" in features:
        can += ["vnni256", "vnni512"]
    elif "avxvnni" in features:
        can += ["vnni256"]
    elif "dotprod" in features:                          # arm64 (LLVM's name for the sdot feature)
        can += ["sdot"]
    choice = os.environ.get("MINIMOE_INT8_DOT", "auto") or "auto"
    if choice not in DOT4_CHOICES:
        raise MinimoeError(f"$MINIMOE_INT8_DOT must be one of {', '.join(DOT4_CHOICES)}, found {choice!r}")
    if choice == "auto":
        from minimoe.kernels.backend import simd_width
        best = can[-1]
        return "vnni256" if best == "vnni512" and simd_width() == "256" else best
    if choice not in can:
        raise MinimoeError(f"$MINIMOE_INT8_DOT={choice}: this CPU (as Numba compiles for it) has no such "
                           f"instruction; it can run {', '.join(can)}")
    return choice


def has_int8_dot() -> bool:
    """Whether this CPU has an integer dot-product instruction (VNNI) that minimoe uses."""
    return int8_dot() != "portable"
