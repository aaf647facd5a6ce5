"""The int8-activation decode path (minimoe/kernels/int8matmul.py, vnni.py): llama.cpp's Q8_0
activations, integer block dot products, the VNNI instruction and its portable fallback.

Oracles: ggml's own quantizers and vec_dot functions (tests/fixtures/int8_dots_ggml.npz, made by
make_int8_dots_ggml.py), NumPy's float16 rounding, and integer sums computed here by hand."""
from __future__ import annotations

import os

import numpy as np
import pytest

import minimoe
from minimoe import quant
from minimoe.errors import MinimoeError
from minimoe.kernels import backend, pack
from minimoe.kernels import int8matmul as im
from minimoe.kernels import qmatmul as qm
from minimoe.kernels import vnni
from minimoe.kernels.backend import BackendError
from minimoe.kernels.packed import KernelInputError
from minimoe.quant import QTensor

FORMATS = ("q4_0", "q4_1", "q8_0", "mxfp4")
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "int8_dots_ggml.npz")
# the portable loops, and the instruction this CPU runs if it has one (the other VNNI width is
# checked on one call in test_vnni_instruction_is_emitted_where_the_cpu_has_it: each compiled
# variant costs seconds)
HOST_DOTS = ["portable"] + ([vnni.int8_dot()] if vnni.int8_dot() != "portable" else [])
SHAPES = [(1, 1, 32), (3, 37, 96), (2, 130, 4128), (4, 9, 544)]     # R, O, I: ragged, G from 16 to 1


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def quantized(x):
    R, I = x.shape
    qx, dx, sx = np.empty((R, I), np.int8), np.empty((R, I // 32), np.float32), np.empty((R, I // 32), np.float32)
    return qx, dx, sx


# --- 1. activations to Q8_0 ------------------------------------------------------------------------

def test_activation_quantization_is_ggmls_reference_bit_for_bit():
    f = np.load(FIXTURE)
    x = f["x"]
    R, I = x.shape
    for kernel in (im.quantize_q8_0.numba, im.quantize_q8_0.numpy):
        qx, dx, sx = quantized(x)
        kernel(x, qx, dx, sx)
        q8_0, q8_1 = f["q8_0"], f["q8_1"]                                  # (R, nb, 34), (R, nb, 36)
        np.testing.assert_array_equal(qx.reshape(R, -1, 32), q8_0[:, :, 2:].view(np.int8))
        np.testing.assert_array_equal(dx.astype(np.float16).view(np.uint16), q8_0[:, :, :2].view(np.uint16)[..., 0])
        np.testing.assert_array_equal(q8_1[:, :, 4:].view(np.int8), q8_0[:, :, 2:].view(np.int8))
        np.testing.assert_array_equal(sx.astype(np.float16).view(np.uint16), q8_1[:, :, 2:4].view(np.uint16)[..., 0])


def test_activation_quantization_numba_equals_twin_on_hard_values():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 256)).astype(np.float32) * 10.0 ** rng.uniform(-9, 6, (6, 8)).repeat(32, 1).astype(np.float32)
    x[0, :32] = 0
    x[1, :32] = np.arange(32) - 15.5                                   # halves after scaling
    x[2, :32] = rng.integers(-254, 255, 32) / 2.0
    x[2, 0] = 127.0                                                    # d = 1: exact ties, away from zero
    a, b = quantized(x), quantized(x)
    im.quantize_q8_0.numba(x, *a)
    im.quantize_q8_0.numpy(x, *b)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert a[0][2, 1:32].tolist() == im.round_half_away(x[2, 1:32]).astype(np.int8).tolist()
    assert np.abs(a[0]).max() <= 127


def test_fp16_rounding_in_numba_is_numpys_float16():
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.standard_normal(2000) * 10.0 ** rng.uniform(-9, 5.5, 2000),
                        [0.0, 65504.0, 65519.0, 65520.0, 1e9, 2 ** -24, 2 ** -25, 3 * 2 ** -26, 2 ** -14]])
    v = v.astype(np.float32)
    x = np.zeros((1, 32 * len(v)), np.float32)
    x[0, ::32] = v * 127                                                # amax = 127 v: d = v
    qx, dx, sx = quantized(x)
    im.quantize_q8_0.numba(x, qx, dx, sx)
    expect = im.fp16_round(np.abs(v) * np.float32(127) / np.float32(127))   # NumPy's float16
    np.testing.assert_array_equal(dx[0], expect)


# --- 2. the integer block sums --------------------------------------------------------------------

def stack(fmt, E, O, I, seed=0):
    w = rand(E, O, I, seed=seed) * 0.1
    return w, pack(quant.quantize(w, fmt))


@pytest.mark.parametrize("dot", HOST_DOTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_block_integer_sums_equal_the_twin_and_a_hand_sum(fmt, dot):
    for i, (R, O, I) in enumerate(SHAPES):
        _, pw = stack(fmt, 3, O, I, seed=i)
        qw = im.quad_words(pw)
        x = rand(R, I, seed=10 + i) * np.float32(3.0)
        experts = np.arange(R, dtype=np.int64) % 3
        got, twin = (np.empty((R, qw.shape[1], qw.shape[3]), np.int32) for _ in range(2))
        k = im.variant("block_isums", dot)
        k.numba(x, qw, pw.G, experts, FORMATS.index(fmt), got)
        k.numpy(x, qw, pw.G, experts, FORMATS.index(fmt), twin)
        np.testing.assert_array_equal(got, twin)
        # by hand: the weight's integer codes (from the float values and scales) times qx, per block
        qx, _, _ = quantized(x)
        im.quantize_q8_0.numpy(x, qx, *quantized(x)[1:])
        w_deq = qm.dequantize(pw)                                          # (3, O, I)
        dw = pw.ungrouped("d")                                             # (3, O, nb)
        v = w_deq.reshape(3, O, -1, 32)
        if pw.m.size:
            v = v - pw.ungrouped("m")[..., None]
        v = np.rint(v / np.where(dw == 0, 1, dw)[..., None]).astype(np.int64)   # (3, O, nb, 32) codes
        hand = np.einsum("robj,rbj->rob", v[experts], qx.reshape(R, -1, 32).astype(np.int64))
        nb = I // 32
        kernel_order = got[:, :, :pw.G * nb].reshape(R, -1, nb)[:, :O]       # (R, O, nb)
        np.testing.assert_array_equal(kernel_order, hand)


def test_integer_sums_match_ggmls_activation_blocks():
    """Our integers, recomputed from ggml's own Q8_0 blocks and weight bytes, give ggml's dot."""
    f = np.load(FIXTURE)
    x, R, I = f["x"], f["x"].shape[0], f["x"].shape[1]
    for fmt in FORMATS:
        w = f[f"w_{fmt}"]
        pw = pack(QTensor(fmt, (w.shape[0], I), w))
        O, nb = w.shape[0], I // 32
        qw = im.quad_words(pw)
        isum = np.empty((R, qw.shape[1], qw.shape[3]), np.int32)
        im.variant("block_isums").numba(x, qw, pw.G, np.zeros(R, np.int64), FORMATS.index(fmt), isum)
        isum = isum[:, :, :pw.G * nb].reshape(R, -1, nb)[:, :O].astype(np.float32)
        act = f["q8_1"] if fmt == "q4_1" else f["q8_0"]
        dx = act[:, :, :2].view(np.float16)[..., 0].astype(np.float32)   # (R, nb)
        y = np.einsum("rob,ob,rb->ro", isum, pw.ungrouped("d")[0], dx)
        if fmt == "q4_1":
            sx = act[:, :, 2:4].view(np.float16)[..., 0].astype(np.float32)
            y = y + np.einsum("ob,rb->ro", pw.ungrouped("m")[0], sx)
        np.testing.assert_allclose(y, f[f"dot_{fmt}_generic"], rtol=2e-6, atol=2e-6)


# --- 3. the GEMVs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_int8_gemv_equals_ggml_vec_dot(fmt):
    f = np.load(FIXTURE)
    x = f["x"]
    w = f[f"w_{fmt}"]
    pw = pack(QTensor(fmt, (w.shape[0], x.shape[1]), w))
    with minimoe.kernels.backend("numba"):
        previous = minimoe.set_activation_precision("int8")
        try:
            y = np.concatenate([qm.qmatmul(x[r:r + 1], pw) for r in range(x.shape[0])])
        finally:
            minimoe.set_activation_precision(previous)
    scale = np.abs(f[f"dot_{fmt}"]).max()
    np.testing.assert_allclose(y, f[f"dot_{fmt}"], rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("dot", HOST_DOTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_int8_gemv_numba_equals_twin_on_stacks(fmt, dot):
    for i, (R, O, I) in enumerate(SHAPES):
        w, pw = stack(fmt, 3, O, I, seed=i)
        x = rand(R, I, seed=20 + i)
        experts = (np.arange(R, dtype=np.int64) * 2) % 3
        qw = im.quad_words(pw)
        outs = []
        kernels = [im.variant(fmt, dot, parallel=False).numba]
        if dot != "portable" and fmt == "q4_0":
            kernels.append(im.variant(fmt, dot).numba)                     # on all cores too (one
                                                                           # format: compile time)
        for kernel in kernels + [im.variant(fmt, dot).numpy]:
            out = np.full((R, O), np.nan, np.float32)
            kernel(x, pw.d, pw.m, qw, pw.G, experts, out)
            outs.append(out)
        scale = np.einsum("roi,ri->ro", np.abs(w[experts]), np.abs(x)).max()
        for out in outs[:-1]:
            np.testing.assert_allclose(out, outs[-1], rtol=0, atol=2e-6 * scale)


@pytest.mark.parametrize("fmt", FORMATS)
def test_int8_path_stays_within_the_documented_error_of_the_float_path(fmt):
    """|y_int8 - y_float| <= 2^-8 sum_i |w_i x_i| (one int8 rounding of x: at most half a step of
    amax/127 per value); on Gaussian x it is far smaller."""
    R, O, I = 2, 64, 512
    w, pw = stack(fmt, 1, O, I)
    x = rand(R, I, seed=3)
    experts = np.zeros(R, np.int64)
    y8 = np.empty((R, O), np.float32)
    im.variant(fmt).numba(x, pw.d, pw.m, im.quad_words(pw), pw.G, experts, y8)
    yf = np.empty((R, O), np.float32)
    qm.GEMV[fmt].numba(x, pw.d, pw.m, pw.qs, pw.G, experts, yf)
    bound = np.abs(qm.dequantize(pw)[0]) @ np.abs(x).T                  # (O, R)
    assert np.all(np.abs(y8 - yf) <= 2 ** -8 * bound.T)
    assert np.abs(y8 - yf).max() < 0.05 * np.abs(yf).max()


# --- 4. the switches --------------------------------------------------------------------------------

def test_the_cpu_feature_picks_the_instruction(monkeypatch):
    monkeypatch.delenv("MINIMOE_INT8_DOT", raising=False)
    monkeypatch.delenv("MINIMOE_SIMD_WIDTH", raising=False)
    assert vnni.int8_dot({"avx512vnni", "avx512vl", "avx512bw", "avx512f"}) == "vnni512"
    assert vnni.int8_dot({"avxvnni", "avx2"}) == "vnni256"
    assert vnni.int8_dot({"avx512f", "avx2"}) == "portable"
    assert vnni.int8_dot({"neon", "dotprod"}) == "sdot"                  # arm64 with dotprod
    assert vnni.int8_dot({"neon"}) == "portable"                         # arm64 without it
    monkeypatch.setenv("MINIMOE_SIMD_WIDTH", "256")
    assert vnni.int8_dot({"avx512vnni", "avx512vl", "avx512bw"}) == "vnni256"
    monkeypatch.setenv("MINIMOE_INT8_DOT", "portable")
    assert vnni.int8_dot({"avx512vnni", "avx512vl", "avx512bw"}) == "portable"
    monkeypatch.setenv("MINIMOE_INT8_DOT", "vnni512")
    with pytest.raises(MinimoeError, match="MINIMOE_INT8_DOT"):
        vnni.int8_dot({"avx2"})                                            # refused, not an LLVM crash
    monkeypatch.setenv("MINIMOE_INT8_DOT", "sdot4")
    with pytest.raises(MinimoeError, match="must be one of"):
        vnni.int8_dot(set())


def test_numba_cpu_settings_are_what_the_choice_reads(monkeypatch):
    import numba
    monkeypatch.setattr(numba.config, "DISABLE_JIT", True)              # kernels run as Python
    assert vnni.int8_dot() == "portable" and not vnni.has_int8_dot()
    monkeypatch.setattr(numba.config, "DISABLE_JIT", False)
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+avx2,-avx512vnni,+avxvnni")
    assert vnni.cpu_features() == {"avx2", "avxvnni"}
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "")
    monkeypatch.setattr(numba.config, "CPU_NAME", "generic")
    assert vnni.cpu_features() == set()


class Spy:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kw):
        self.calls.append((args, kw))
        return self.fn(*args, **kw)


def _decode_once(fmt="q4_0"):
    w, pw = stack(fmt, 1, 40, 256)
    return qm.qmatmul(rand(1, 256, seed=9), pw[0])


def test_the_int8_path_is_used_where_the_cpu_has_the_instruction(monkeypatch):
    monkeypatch.delenv("MINIMOE_INT8_DOT", raising=False)
    spy = Spy(im.imatmul_into)
    monkeypatch.setattr(im, "imatmul_into", spy)
    monkeypatch.setattr(vnni, "_chosen", {})
    monkeypatch.setattr(vnni, "cpu_features", lambda: set(HOST_DOTS) and
                        ({"avx512vnni", "avx512vl", "avx512bw"} if "vnni512" in HOST_DOTS else
                         {"avxvnni"} if "vnni256" in HOST_DOTS else set()))
    with backend("numba"):
        previous = minimoe.set_activation_precision("auto")
        try:
            _decode_once()
        finally:
            minimoe.set_activation_precision(previous)
    if HOST_DOTS[-1] == "portable":                                        # no VNNI here: auto = float
        assert spy.calls == []
    else:
        assert len(spy.calls) == 1 and vnni.int8_dot() == HOST_DOTS[-1]


def test_without_the_instruction_auto_is_float_and_int8_runs_the_portable_loops(monkeypatch):
    monkeypatch.delenv("MINIMOE_INT8_DOT", raising=False)
    monkeypatch.setattr(vnni, "_chosen", {})
    monkeypatch.setattr(vnni, "cpu_features", lambda: {"avx2", "fma"})    # an older CPU, simulated
    spy = Spy(im.imatmul_into)
    monkeypatch.setattr(im, "imatmul_into", spy)
    with backend("numba"):
        previous = minimoe.set_activation_precision("auto")
        try:
            y_auto = _decode_once()
            assert spy.calls == []                                         # the float kernels
            minimoe.set_activation_precision("int8")
            y_int8 = _decode_once()
        finally:
            minimoe.set_activation_precision(previous)
    assert len(spy.calls) == 1 and vnni.int8_dot() == "portable"
    np.testing.assert_allclose(y_int8, y_auto, rtol=0.05, atol=0.05 * np.abs(y_auto).max())


def test_precision_switch_names_and_errors(monkeypatch):
    assert minimoe.get_activation_precision() in ("auto", "float", "int8")
    previous = minimoe.set_activation_precision("FLOAT")
    try:
        assert minimoe.get_activation_precision() == "float"
        with pytest.raises(BackendError, match="activation precision"):
            minimoe.set_activation_precision("int4")
    finally:
        minimoe.set_activation_precision(previous)


def test_environment_variable_sets_the_precision(tmp_path):
    import subprocess
    import sys
    code = ("import minimoe, sys; print(minimoe.get_activation_precision(), 'numba' in sys.modules)")
    env = dict(os.environ, MINIMOE_ACTIVATIONS="float", PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["float", "False"]
    env["MINIMOE_ACTIVATIONS"] = "int16"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode != 0 and "MINIMOE_ACTIVATIONS" in out.stderr


@pytest.mark.parametrize("width", ["vnni512", "vnni256"])
def test_vnni_instruction_is_emitted_where_the_cpu_has_it(width):
    can = {"vnni512": ["vnni512", "vnni256"], "vnni256": ["vnni256"]}.get(vnni.int8_dot(), [])
    if width not in can:
        pytest.skip(f"no {width} on this CPU")
    from numba import njit
    dot4 = vnni.DOT4[width]

    @njit
    def one(acc, a, b):
        dot4(acc, 16, a, 1, b, 2)                        # acc[16:32] += dot4(a[1:17], b[2:18])

    rng = np.random.default_rng(0)
    acc = rng.integers(-99, 99, 40).astype(np.int32)
    a = rng.integers(0, 2 ** 32, 20, dtype=np.uint64).astype(np.uint32)
    b = rng.integers(-2 ** 31, 2 ** 31, 20).astype(np.int32)
    before, twin = acc.copy(), acc.copy()
    one(acc, a, b)
    vnni.dot4_numpy(twin, 16, a, 1, b, 2)
    np.testing.assert_array_equal(acc, twin)
    bytes_a = a[1:17].view(np.uint8).reshape(16, 4).astype(np.int64)    # (16, 4) 0..255
    bytes_b = b[2:18].view(np.int8).reshape(16, 4).astype(np.int64)     # (16, 4) -128..127
    np.testing.assert_array_equal(acc[16:32] - before[16:32], (bytes_a * bytes_b).sum(axis=1))
    np.testing.assert_array_equal(np.delete(acc, np.s_[16:32]), np.delete(before, np.s_[16:32]))
    assert "vpdpbusd" in next(iter(one.inspect_asm().values()))


def test_arm64_sdot_identity_equals_the_unsigned_signed_dot_product():
    """dot4_sdot's arithmetic (a ^ 0x80 signed, times b, plus 128 sum b), in NumPy, equals dot4 on
    every byte value, the extremes included."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2 ** 32, 40, dtype=np.uint64).astype(np.uint32)
    a[:4] = [0, 0xFFFFFFFF, 0x80808080, 0x7F7F7F7F]
    b = rng.integers(-2 ** 31, 2 ** 31, 40).astype(np.int32)
    b[:4] = [0, -1, np.int32(-2 ** 31), 0x7F7F7F7F]
    for ia, ib in ((0, 0), (3, 17), (24, 5)):
        acc1 = rng.integers(-99, 99, 16).astype(np.int32)
        acc2 = acc1.copy()
        vnni.dot4_numpy(acc1, 0, a, ia, b, ib)
        vnni.dot4_sdot_numpy(acc2, 0, a, ia, b, ib)
        np.testing.assert_array_equal(acc1, acc2)


def test_arm64_sdot_instruction_is_emitted_for_an_arm64_target():
    """sdot_ir's IR, compiled by LLVM for arm64 (cross-compiled: this may run on x86), is sdot
    instructions. Where the host is arm64 with dotprod, the Numba kernel also runs and is checked."""
    import llvmlite.binding as llvm
    from llvmlite import ir
    try:
        llvm.initialize_all_targets()
        llvm.initialize_all_asmprinters()
        target = llvm.Target.from_triple("aarch64-unknown-linux-gnu")
    except RuntimeError:
        pytest.skip("this LLVM has no arm64 target")
    module = ir.Module(name="sdot")
    module.triple = "aarch64-unknown-linux-gnu"
    words = ir.VectorType(ir.IntType(32), 4)
    fn = ir.Function(module, ir.FunctionType(words, [words, words, words]), "dot4")
    builder = ir.IRBuilder(fn.append_basic_block())
    builder.ret(vnni.sdot_ir(builder, *fn.args))
    machine = target.create_target_machine(cpu="generic", features="+neon,+dotprod")
    asm = machine.emit_assembly(llvm.parse_assembly(str(module)))
    assert asm.count("sdot") == 2 and "v0.4s" in asm
    if vnni.int8_dot() == "sdot":                         # an arm64 host: run it
        from numba import njit

        @njit
        def one(acc, a, b):
            vnni.dot4_sdot(acc, 0, a, 0, b, 0)
        rng = np.random.default_rng(0)
        acc, twin = np.zeros(16, np.int32), np.zeros(16, np.int32)
        a = rng.integers(0, 2 ** 32, 16, dtype=np.uint64).astype(np.uint32)
        b = rng.integers(-2 ** 31, 2 ** 31, 16).astype(np.int32)
        one(acc, a, b)
        vnni.dot4_numpy(twin, 0, a, 0, b, 0)
        np.testing.assert_array_equal(acc, twin)


# --- 5. a model -------------------------------------------------------------------------------------

@pytest.mark.parametrize("recipe", ["q4_0", "q8_0", "mxfp4"])
def test_model_logits_int8_within_tolerance_of_float_and_numpy_backend_unchanged(recipe):
    cfg = minimoe.Config.preset("tiny-moe")
    qmodel = minimoe.quantize(minimoe.Model(cfg, seed=0), recipe)
    tokens = np.array([3, 1, 4], np.int64)                                 # 3 rows: the decode GEMVs
    logits = {}
    with backend("numba"):
        for precision in ("float", "int8"):
            previous = minimoe.set_activation_precision(precision)
            try:
                logits[precision] = qmodel(tokens)
            finally:
                minimoe.set_activation_precision(previous)
    with backend("numpy"):
        previous = minimoe.set_activation_precision("int8")                # the reference path: float
        try:
            ref = qmodel(tokens)
        finally:
            minimoe.set_activation_precision(previous)
    spread = logits["float"].std()
    assert np.abs(logits["int8"] - logits["float"]).max() < 0.02 * spread   # docs/kernels.md
    assert np.abs(logits["int8"] - logits["float"]).max() > 0                # it did run in integers
    np.testing.assert_allclose(ref, logits["float"], rtol=1e-4, atol=1e-4 * spread)


# --- 6. several weights that read the same x, in one call ------------------------------------------

MANY_SHAPES = [(1, [32, 16, 13], 96, 1), (2, [40, 40], 544, 3), (3, [5, 37, 16], 4128, 2)]   # R, O_i, I, E


@pytest.mark.parametrize("fmt", FORMATS)
def test_one_call_over_several_weights_equals_a_call_per_weight_and_the_twin(fmt):
    """imatmul_many: ragged row counts (partial groups), stacks with experts, one and several rows;
    the single-weight kernel's result up to the order of the float sum over blocks (the integer
    sums are the same; fastmath lets LLVM reorder the float ones), and the twin's."""
    for i, (R, Os, I, E) in enumerate(MANY_SHAPES):
        pws = [stack(fmt, E, O, I, seed=10 * i + j)[1] for j, O in enumerate(Os)]
        x = rand(R, I, seed=i)
        experts = np.arange(R, dtype=np.int64) % E
        for parallel in ([False, True] if fmt == "q4_0" else [False]):
            ys = im.imatmul_many(x, pws, experts, parallel)
            for pw, y in zip(pws, ys):
                one = np.full(y.shape, np.nan, np.float32)
                im.imatmul_into(x, pw, experts, one, parallel)
                np.testing.assert_allclose(y, one, rtol=0, atol=1e-6 * np.abs(one).max())
        twin = [np.full((R, O), np.nan, np.float32) for O in Os]
        im.variant("many_" + fmt).numpy(x, tuple(p.d for p in pws), tuple(p.m for p in pws),
                                         tuple(im.quad_words(p) for p in pws), pws[0].G, experts, tuple(twin))
        for y, t in zip(ys, twin):
            np.testing.assert_allclose(y, t, rtol=1e-5, atol=1e-5 * np.abs(t).max())


@pytest.mark.parametrize("precision", ["float", "int8"])
def test_weights_sharing_an_input_are_one_kernel_call_in_decode(monkeypatch, precision):
    """linear.forward_many at decode: one imatmul_many call for q, k and v (int8 path), the same
    numbers as one matmul per weight (up to float summation order) and as the NumPy twin; the float
    path calls each weight."""
    from minimoe.nn import linear
    q, k, v = (quant.quantize(rand(O, 96, seed=O), "q4_0") for O in (32, 16, 13))
    bias = rand(16, seed=5)
    x = rand(1, 1, 96, seed=1)
    spy = Spy(im.imatmul_many)
    monkeypatch.setattr(im, "imatmul_many", spy)
    previous = minimoe.set_activation_precision(precision)
    try:
        with backend("numba"):
            ys, caches = linear.forward_many(x, [q, k, v], [None, bias, None], names=("q", "k", "v"))
            each = [linear.forward(x, w, b)[0] for w, b in ((q, None), (k, bias), (v, None))]
        with backend("numpy"):
            ref = [linear.forward(x, w, b)[0] for w, b in ((q, None), (k, bias), (v, None))]
    finally:
        minimoe.set_activation_precision(previous)
    assert len(spy.calls) == (1 if precision == "int8" else 0)
    assert [y.shape for y in ys] == [(1, 1, 32), (1, 1, 16), (1, 1, 13)]
    assert [c[1] for c in caches] == [q, k, v] and caches[1][2] and not caches[0][2]
    for y, e, r in zip(ys, each, ref):
        np.testing.assert_allclose(y, e, rtol=0, atol=1e-6 * np.abs(e).max())
        np.testing.assert_allclose(y, r, rtol=0, atol=0.02 * np.abs(r).max())
    with pytest.raises(KernelInputError, match="96"):
        with backend("numba"):
            linear.forward_many(rand(1, 64), [q, k], [None, None])


def test_a_trace_records_each_weight_of_a_shared_call():
    """The fused call is traced as one matmul per weight, with its own name, FLOPs and bytes."""
    model = minimoe.quantize(minimoe.Model(minimoe.Config.preset("tiny-moe"), seed=0), "q8_0")
    kv = model.new_kv_cache(1, 8)
    model.forward(np.array([[1, 2, 3]]), kv)
    with backend("numba"), minimoe.trace() as tr:
        model.forward(np.array([[4]]), kv)
    names = [name for name, r in tr.ops.items() if r["kind"] == "matmul"]
    for part in ("attn.q", "attn.k", "attn.v"):
        assert f"layers.0.{part}" in names
    gates = [n for n in names if n.startswith("layers.0.moe.experts.") and n.endswith((".gate", ".up"))]
    assert len(gates) == 2 * model.config.top_k
    q = tr.ops["layers.0.attn.q"]
    assert q["flops"] == 2 * model.config.d_model * model.config.n_heads * model.config.head_dim



# --- 7. a prefill's few rows through the integer kernel -------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_integer_prefill_kernel_equals_the_gemv_and_the_twin(fmt):
    """imatmul_rows (codes unpacked once per group, used for every row): ragged row counts and
    widths, matrix e of a stack; the GEMV's result up to the order of the float sum over blocks,
    and the twin's."""
    for i, (R, O, I) in enumerate([(5, 37, 96), (17, 16, 544), (32, 9, 4128)]):
        w, pw = stack(fmt, 3, O, I, seed=i)
        x = rand(R, I, seed=30 + i)
        out = np.full((R, O), np.nan, np.float32)
        im.imatmul_rows(x, pw, 2, out)
        gemv = np.full((R, O), np.nan, np.float32)
        im.imatmul_into(x, pw, np.full(R, 2, np.int64), gemv, False)
        np.testing.assert_allclose(out, gemv, rtol=0, atol=1e-6 * np.abs(gemv).max())
        twin = np.full((R, O), np.nan, np.float32)
        im.variant("gemm_" + fmt).numpy(x, pw.d, pw.m, im.quad_words(pw), pw.G, 2, twin)
        np.testing.assert_allclose(out, twin, rtol=1e-5, atol=1e-5 * np.abs(twin).max())


@pytest.mark.parametrize("precision", ["float", "int8"])
def test_few_prefill_rows_take_the_integer_kernel_only_with_int8_activations(monkeypatch, precision):
    spy = Spy(im.imatmul_rows)
    monkeypatch.setattr(im, "imatmul_rows", spy)
    w, pw = stack("q4_0", 1, 40, 256)
    previous = minimoe.set_activation_precision(precision)
    try:
        for R in (qm.GEMV_MAX_ROWS + 1, qm.INT8_GEMM_MAX_ROWS, qm.INT8_GEMM_MAX_ROWS + 1):
            x = rand(R, 256, seed=R)
            y = qm.qmatmul(x, pw[0])
            np.testing.assert_allclose(y, x @ qm.dequantize(pw)[0].T, rtol=0, atol=0.03 * np.abs(y).max())
    finally:
        minimoe.set_activation_precision(previous)
    assert [a[0].shape[0] for a, _ in spy.calls] == ([] if precision == "float" else
                                                      [qm.GEMV_MAX_ROWS + 1, qm.INT8_GEMM_MAX_ROWS])


def test_quad_words_are_made_once_per_stack_and_shared_by_its_experts():
    """A prefill multiplies one expert at a time (w[e], a view): its words are a view of the
    stack's, not a new regrouping per call."""
    for fmt in FORMATS:
        w, pw = stack(fmt, 4, 33, 96)
        whole = im.quad_words(pw)
        for e in range(4):
            view = im.quad_words(pw[e])
            assert np.shares_memory(view, whole)
            np.testing.assert_array_equal(view, im._regroup(pw[e].qs, fmt))
