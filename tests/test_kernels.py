"""Every Numba kernel against its NumPy twin and a float64 reference, on ragged shapes; the backend
switch; the whole model on both backends; and clear errors for malformed inputs.

Compile time counts against the suite's budget: every kernel is called with one dtype (float32)
and one layout, so each compiles once (and Numba's cache=True keeps it for the next run).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import minimoe
from minimoe import quant
from minimoe.kernels import KernelInputError, backend, matmul, ops, pack
from minimoe.kernels import moe as mk
from minimoe.kernels import qmatmul as qm
from minimoe.kernels.backend import BackendError
from minimoe.kernels.packed import PackedWeight, to_kernel_order
from minimoe.nn import attention, linear, norm, router
from minimoe.nn import moe as nn_moe

FORMATS = ["q4_0", "q4_1", "q8_0", "mxfp4"]
# (R rows of x, O output rows, I input width): one row, odd rows, the prefill path (R > 4),
# one block (I = 32), many blocks (I = 1280), a tile boundary (O > TILE_ROWS)
SHAPES = [(1, 1, 32), (1, 7, 1280), (3, 5, 96), (4, 33, 64), (5, 3, 32), (9, 131, 160)]


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


class _Spy:
    """Wraps a kernel and records that it was called."""
    def __init__(self, kernel, calls):
        self.kernel, self.calls, self.numba, self.numpy = kernel, calls, kernel.numba, kernel.numpy

    def __call__(self, *args):
        self.calls.append(1)
        return self.kernel(*args)


def assert_close_to_reference(y, x, w64):
    """|y - x @ w.T| <= 1e-5 * (|x| @ |w|.T), the float64 reference and its natural scale."""
    ref = x.astype(np.float64) @ w64.T
    scale = np.abs(x.astype(np.float64)) @ np.abs(w64).T
    assert y.shape == ref.shape and y.dtype == np.float32
    assert np.all(np.abs(y - ref) <= 1e-5 * scale + 1e-30), np.max(np.abs(y - ref) / (scale + 1e-30))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("R,O,I", SHAPES)
def test_fused_matmul_equals_twin_and_float64_reference(fmt, R, O, I):
    w = rand(O, I, seed=1)
    qt = quant.quantize(w, fmt)
    w64 = qt.dequantize().astype(np.float64)
    x = rand(R, I, seed=2)
    with backend("numba"):
        y_numba = matmul(x, qt)
    with backend("numpy"):
        y_twin = matmul(x, qt)
    assert_close_to_reference(y_numba, x, w64)
    assert_close_to_reference(y_twin, x, w64)


@pytest.mark.parametrize("fmt", FORMATS)
def test_gemv_over_a_stack_of_experts(fmt):
    E, O, I = 5, 9, 64
    w = rand(E, O, I, seed=3)
    qt = quant.quantize(w, fmt)
    pw = pack(qt)
    x = rand(3, I, seed=4)
    experts = np.array([4, 0, 4], np.int64)                       # each row its own expert
    w64 = qt.dequantize().astype(np.float64)
    for be in ("numba", "numpy"):
        with backend(be):
            y = qm.qmatmul(x, pw, experts)
        for r, e in enumerate(experts):
            assert_close_to_reference(y[r:r + 1], x[r:r + 1], w64[e])


@pytest.mark.parametrize("gemv", ["blas", "numba"])
@pytest.mark.parametrize("R,O,I", [(1, 1, 3), (2, 17, 64), (4, 33, 130), (7, 5, 16)])
def test_float_gemv_equals_twin_and_float64_reference(R, O, I, gemv, monkeypatch):
    monkeypatch.setattr(qm, "FLOAT_GEMV", gemv)
    calls = []
    monkeypatch.setattr(qm.gemv_f32, "serial", _Spy(qm.gemv_f32.serial, calls))
    w, x = rand(3, O, I, seed=30), rand(R, I, seed=31)
    experts = np.arange(R, dtype=np.int64) % 3
    for be in ("numba", "numpy"):
        with backend(be):
            y_stack = qm.fmatmul(x, w, experts)                   # row r times w[experts[r]]
            y_plain = qm.fmatmul(x, w[1])                         # (R, I) @ w[1].T
        for r, e in enumerate(experts):
            assert_close_to_reference(y_stack[r:r + 1], x[r:r + 1], w[e].astype(np.float64))
        assert_close_to_reference(y_plain, x, w[1].astype(np.float64))
    assert bool(calls) == (gemv == "numba" and R <= qm.GEMV_MAX_ROWS)   # which GEMV fmatmul took
    for fn in (qm.gemv_f32.numba, qm.gemv_f32.serial.numba):      # both compiled forms, directly
        y = np.empty((R, O), np.float32)
        fn(x, w, experts, y)
        for r, e in enumerate(experts):
            assert_close_to_reference(y[r:r + 1], x[r:r + 1], w[e].astype(np.float64))


@pytest.mark.parametrize("fmt", FORMATS)
def test_dequantize_loops_are_bit_exact(fmt):
    qt = quant.quantize(rand(3, 7, 96, seed=5), fmt)
    for be in ("numba", "numpy"):
        with backend(be):
            np.testing.assert_array_equal(qm.dequantize(pack(qt)), qt.dequantize())


def test_gemv_kernels_equal_twins_directly():
    """The Kernel pairs themselves, called with the same arrays (17 rows: a padded last group)."""
    x = rand(3, 224, seed=7)
    xk = to_kernel_order(x)                                       # (3, 32, 7)
    experts = np.array([1, 0, 1], np.int64)
    for fmt in FORMATS:
        qt = quant.quantize(rand(2, 17, 224, seed=6), fmt)
        pw = pack(qt)
        assert pw.G == 16 and pw.d.shape == (2, 2, 16 * 7)
        xr, xs = qm._operands(x, pw.G)                            # the GEMVs' copy of x
        np.testing.assert_array_equal(xr, np.tile(xk, (1, 1, pw.G)))
        np.testing.assert_allclose(xs, np.tile(qm.block_sums(xk), (1, pw.G)), rtol=1e-6, atol=1e-6)
        w64 = qt.dequantize().astype(np.float64)
        for fn in (qm.GEMV[fmt].numba, qm.GEMV[fmt].serial.numba, qm.GEMV[fmt].numpy):   # all cores, one core, twin
            y = np.empty((3, 17), np.float32)
            fn(x, pw.d, pw.m, pw.qs, pw.G, experts, y)
            for r, e in enumerate(experts):
                assert_close_to_reference(y[r:r + 1], x[r:r + 1], w64[e])
        ta, tb = np.empty((16, 224), np.float32), np.empty((16, 224), np.float32)
        qm.DEQUANT_TILE[fmt].numba(pw.d, pw.m, pw.qs, pw.G, 1, 1, ta)   # rows 16..31: 16 real, 15 padding
        qm.DEQUANT_TILE[fmt].numpy(pw.d, pw.m, pw.qs, pw.G, 1, 1, tb)
        np.testing.assert_array_equal(ta, tb)
        np.testing.assert_array_equal(ta[:1], to_kernel_order(qt.dequantize()[1, 16:17]).reshape(1, 224))
        np.testing.assert_array_equal(ta[1:], 0)



def test_packed_kernels_load_from_numba_cache():
    """Each packed kernel is its format's pieces inlined into a shared skeleton; each must still load
    from Numba's on-disk cache in a new process (a kernel closing over its pieces would compile
    again in every process). The first run compiles whatever is not cached yet."""
    code = """if True:
        import numpy as np
        from minimoe import quant
        from minimoe.kernels import pack
        from minimoe.kernels import qmatmul as qm
        kernels = []
        for fmt in qm.GEMV:
            pw = pack(quant.quantize(np.ones((1, 16, 32), np.float32), fmt))
            x, y, ex = np.ones((1, 32), np.float32), np.empty((1, 16), np.float32), np.zeros(1, np.int64)
            for k in (qm.GEMV[fmt].numba, qm.GEMV[fmt].serial.numba):
                k(x, pw.d, pw.m, pw.qs, pw.G, ex, y)
                kernels.append(k)
            qm.DEQUANT_TILE[fmt].numba(pw.d, pw.m, pw.qs, pw.G, 0, 0, np.empty((16, 32), np.float32))
            kernels.append(qm.DEQUANT_TILE[fmt].numba)
        print(sum(len(k.stats.cache_misses) for k in kernels), sum(len(k.stats.cache_hits) for k in kernels))"""

    def run():
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run().returncode == 0
    second = run()
    assert second.stdout.split() == ["0", "12"], second.stdout + second.stderr   # 0 compiled, 12 loaded

def test_expert_views_share_the_stack_repack():
    qt = quant.quantize(rand(4, 8, 64, seed=8), "q4_0")
    stack = pack(qt)
    e2 = pack(qt[2])                                              # QTensor view of expert 2
    assert np.shares_memory(e2.qs, stack.qs) and e2.shape == (8, 64)
    assert pack(qt) is stack                                       # cached


# ----------------------------------------------------------------------------------------------
# decode ops and MoE dispatch/combine: Numba == twin == a plain float64 formula
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("R,C", [(1, 8), (3, 17), (2, 512)])
def test_rmsnorm(R, C):
    x, w = rand(R, C, seed=9), rand(C, seed=10)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-5) * w
    for fn in (norm.RMSNORM.numba, norm.RMSNORM.numpy):          # the kernel and its twin in nn/norm.py
        np.testing.assert_allclose(fn(x, w, 1e-5)[0], ref, rtol=1e-5, atol=1e-6)


def _attention_reference(q, k, v, window, sinks):
    """float64, written from the formula, one query at a time: softmax(q k / sqrt(D) [, sink]) v
    over the keys at positions <= the query's (and within the window)."""
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    B, H, T, D = q.shape
    G, S = k.shape[1], k.shape[2]
    out = np.zeros((B, H, T, D))
    for b in range(B):
        for h in range(H):
            g = h // (H // G)
            for t in range(T):
                pos = S - T + t
                s0 = max(0, pos + 1 - window) if window else 0
                s = k[b, g, s0:pos + 1] @ q[b, h, t] / np.sqrt(D)
                logits = np.concatenate([s, sinks[h:h + 1]]) if sinks is not None else s
                p = np.exp(logits - logits.max())
                p = p[:len(s)] / p.sum()
                out[b, h, t] = p @ v[b, g, s0:pos + 1]
    return out


@pytest.mark.parametrize("B,H,G,D,T,S,window,with_sinks", [
    (1, 4, 2, 8, 1, 1, 0, False), (2, 6, 3, 16, 1, 6, 0, True), (1, 8, 2, 64, 1, 41, 7, False),
    (3, 2, 1, 4, 3, 10, 3, True), (2, 4, 4, 6, 5, 5, 0, False)])
def test_attend(B, H, G, D, T, S, window, with_sinks):
    q = rand(B, T, H, D, seed=11).transpose(0, 2, 1, 3)             # (B, H, T, D), a view, as the model has it
    kc, vc = rand(B, G, S + 3, D, seed=14), rand(B, G, S + 3, D, seed=15)
    k, v = kc[:, :, :S], vc[:, :, :S]                                # the filled part of a KV cache
    sinks = rand(H, seed=16) if with_sinks else None
    ref = _attention_reference(q, k, v, window, sinks)
    for fn in (ops.attend, attention.attend):                       # the kernel and its twin in nn/attention.py
        np.testing.assert_allclose(fn(q, k, v, window, sinks)[0], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rule,renorm", [("softmax_topk", True), ("softmax_topk", False), ("topk_softmax", False)])
@pytest.mark.parametrize("R,E,K", [(1, 4, 2), (5, 8, 2), (3, 7, 1), (2, 64, 4)])
def test_select(rule, renorm, R, E, K):
    logits = rand(R, E, seed=17)
    logits[0, 1] = logits[0, 2] = logits[0].max() + 1                # a tie: the lower index wins
    # reference: the rules as the papers state them, in float64
    probs = np.exp(logits - logits.max(-1, keepdims=True).astype(np.float64))
    probs /= probs.sum(-1, keepdims=True)
    scores = probs if rule == "softmax_topk" else logits
    want_e = np.argsort(-scores, axis=-1, kind="stable")[:, :K]
    g = np.take_along_axis(scores, want_e, -1).astype(np.float64)
    if rule == "topk_softmax":
        g = np.exp(g - g.max(-1, keepdims=True))
        g /= g.sum(-1, keepdims=True)
    elif renorm:
        g = g / g.sum(-1, keepdims=True)
    for fn in (ops.select, router.select):                          # the kernel and its twin in nn/router.py
        w, e, p, _ = fn(logits, K, rule, renorm, 1.0)
        np.testing.assert_array_equal(e, want_e)
        np.testing.assert_allclose(w, g, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(p, probs, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("N,K,E", [(1, 1, 1), (1, 2, 4), (7, 2, 8), (13, 3, 5)])
def test_moe_dispatch_gather_combine(N, K, E):
    rng = np.random.default_rng(N * 100 + E)
    experts = np.stack([rng.choice(E, K, replace=False) for _ in range(N)]).astype(np.int64)  # (N, K)
    x, weights = rand(N, 6, seed=20), rand(N, K, seed=21)
    ys = rand(N * K, 6, seed=22)
    dy = rand(N, 6, seed=23)
    want_order = np.argsort(experts.ravel(), kind="stable")
    want_offsets = np.concatenate([[0], np.cumsum(np.bincount(experts.ravel(), minlength=E))])
    y_assign = np.empty_like(ys, dtype=np.float64)
    y_assign[want_order] = ys                                       # (A, C) in (token, slot) order
    want_y = np.einsum("nk,nkc->nc", weights.astype(np.float64), y_assign.reshape(N, K, 6))
    want_dw = np.einsum("nkc,nc->nk", y_assign.reshape(N, K, 6), dy)
    want_dys = (weights[:, :, None].astype(np.float64) * dy[:, None, :]).reshape(N * K, 6)[want_order]
    for impl in (mk, nn_moe):                                       # the kernels and their twins in nn/moe.py
        order, offsets = impl.dispatch(experts, E)
        np.testing.assert_array_equal(order, want_order)
        np.testing.assert_array_equal(offsets, want_offsets)
        np.testing.assert_array_equal(impl.gather(x, order, K), x[order // K])
        np.testing.assert_allclose(impl.combine(ys, order, weights), want_y, rtol=1e-5, atol=1e-6)
        dw, dys = impl.combine_backward(dy, ys, order, weights)
        np.testing.assert_allclose(dw, want_dw, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dys, want_dys, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fmt", ["fp32", "q4_0", "q8_0"])
@pytest.mark.parametrize("N", [1, 3, 9])
def test_matmul_over_a_stack_of_experts(fmt, N):
    """The grouped matmul of an MoE layer (row n times matrix experts[n]): kernel == twin == float64."""
    w = rand(5, 7, 64, seed=30)
    wq = w if fmt == "fp32" else quant.quantize(w, fmt)
    w64 = w.astype(np.float64) if fmt == "fp32" else wq.dequantize().astype(np.float64)
    x, b = rand(N, 64, seed=31), rand(5, 7, seed=32)
    experts = np.random.default_rng(N).integers(0, 5, N)
    want = np.einsum("ni,noi->no", x.astype(np.float64), w64[experts]) + b[experts]
    for fn in (linear.MATMUL.numba, linear.MATMUL.numpy):
        if fn is linear.MATMUL.numba and not linear.MATMUL.when(x, wq, b, experts):
            continue
        np.testing.assert_allclose(fn(x, wq, b, experts), want, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# The backend switch
# ----------------------------------------------------------------------------------------------

def test_backend_switch_and_context():
    assert minimoe.get_backend() == "numba"
    with minimoe.backend("numpy"):
        assert minimoe.get_backend() == "numpy"
        with minimoe.backend("NUMBA"):
            assert minimoe.get_backend() == "numba"
        assert minimoe.get_backend() == "numpy"
    assert minimoe.get_backend() == "numba"
    assert minimoe.set_backend("numpy") == "numba"
    assert minimoe.set_backend("numba") == "numpy"
    with pytest.raises(BackendError, match="must be one of numba, numpy, found 'cuda'"):
        minimoe.set_backend("cuda")


def test_backend_from_environment():
    code = "import minimoe; print(minimoe.get_backend())"
    env = dict(os.environ, MINIMOE_BACKEND="numpy")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "numpy"
    env["MINIMOE_BACKEND"] = "fortran"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "$MINIMOE_BACKEND: backend must be one of numba, numpy, found 'fortran'" in out.stderr


_HAS_AVX512 = all(__import__("llvmlite.binding", fromlist=["x"]).get_host_cpu_features().get(f, False)
                  for f in ("avx512f", "avx512bw"))


def _run(code: str, tmp_path, **env):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_CPU", "MINIMOE_SIMD"))}
    e.update(env, NUMBA_CACHE_DIR=str(tmp_path))
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True)


def test_import_has_no_side_effects(tmp_path):
    """`import minimoe` sets no environment variable, starts no thread and loads no Numba; the
    first kernel then sets Numba's own config and starts its thread pool (OpenMP where Numba has
    it, told not to spin), leaving the environment as it was."""
    code = """if True:
        import os, sys, threading
        before = dict(os.environ)
        import minimoe
        print(dict(os.environ) == before, threading.active_count(), "numba" in sys.modules)
        import numpy as np
        minimoe.Model(minimoe.Config.preset("tiny-moe"))(np.array([1, 2]))
        import numba
        numba.get_num_threads()                           # starts Numba's thread pool
        print(dict(os.environ) == before, numba.threading_layer())
        gomp = [l for l in open("/proc/self/maps") if "libgomp" in l] if os.path.exists("/proc/self/maps") else []
        print(bool(gomp))"""
    out = _run(code, tmp_path)
    assert out.returncode == 0, out.stderr
    words = out.stdout.split()
    assert words[:4] == ["True", "1", "False", "True"]
    assert words[4] in ("omp", "workqueue")                  # omp where Numba has it (not every platform)
    if words[5] == "True":                                   # GNU OpenMP loaded: then it is the layer
        assert words[4] == "omp"


@pytest.mark.skipif(not _HAS_AVX512, reason="the SIMD-width switch acts only on CPUs with AVX-512F and BW")
def test_simd_width_switch(tmp_path):
    """On AVX-512 CPUs, MINIMOE_SIMD_WIDTH states the vector width for Intel and AMD alike: 512
    (the default) gives 512-bit FMAs (zmm registers), 256 none. A target the user chose is left
    alone, and a bad value is a clear error."""
    code = """if True:
        import re, numpy as np, numba
        from minimoe.kernels import qmatmul
        fn = numba.njit(fastmath={"reassoc", "contract", "nsz"})(qmatmul.gemv_f32.serial.numba.py_func)
        x = np.ones((1, 256), np.float32); w = np.ones((1, 8, 256), np.float32); out = np.empty((1, 8), np.float32)
        fn(x, w, np.zeros(1, np.int64), out)
        asm = fn.inspect_asm(fn.signatures[0])
        print(numba.config.CPU_FEATURES is not None, bool(re.search(r"vfmadd\\w*ps\\s[^\\n]*zmm", asm)))"""
    assert _run(code, tmp_path).stdout.split() == ["True", "True"]
    assert _run(code, tmp_path, MINIMOE_SIMD_WIDTH="256").stdout.split() == ["True", "False"]
    user = _run(code, tmp_path, NUMBA_CPU_NAME="skylake-avx512")
    assert user.stdout.split()[0] == "False"                        # the user's choice is kept
    bad = _run(code, tmp_path, MINIMOE_SIMD_WIDTH="1024")
    assert bad.returncode != 0 and "$MINIMOE_SIMD_WIDTH must be 256 or 512, found '1024'" in bad.stderr


def test_simd_features_state_the_width():
    """What the switch asks LLVM for, checked on any CPU: the preference is stated both ways."""
    from minimoe.kernels.backend import simd_features
    wide, narrow = simd_features("512"), simd_features("256")
    if not _HAS_AVX512:
        assert wide is None and narrow is None                     # no 512-bit vectors to choose
    else:
        assert wide.endswith(",-prefer-256-bit") and narrow.endswith(",+prefer-256-bit")
        assert "prefer-256-bit" not in wide[:-len(",-prefer-256-bit")]


# ----------------------------------------------------------------------------------------------
# The whole model on both backends, float and packed; fused decode == the general forward
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("recipe", ["fp32", "q4_0", "mxfp4-moe", "q8_0"])
def test_model_same_logits_and_tokens_on_both_backends(recipe):
    cfg = minimoe.Config.preset("tiny-moe", d_model=64, d_expert=64, d_ff=64)
    model = minimoe.Model(cfg, seed=3)
    if recipe != "fp32":
        model = minimoe.quantize(model, recipe)
    prompt = np.arange(11) % cfg.vocab_size
    runs = {}
    for be in ("numba", "numpy"):
        with backend(be):
            runs[be] = (model(prompt), model.generate(prompt, 12))
    np.testing.assert_allclose(runs["numba"][0], runs["numpy"][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(runs["numba"][1], runs["numpy"][1])


@pytest.mark.parametrize("recipe", ["fp32", "q4_0"])
def test_decode_steps_equal_the_full_forward(recipe):
    cfg = minimoe.Config.preset("tiny-moe", d_model=64, d_expert=64, d_ff=64)
    model = minimoe.Model(cfg, seed=4)
    if recipe != "fp32":
        model = minimoe.quantize(model, recipe)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 9))
    full = model(tokens)                                           # (2, 9, V), all positions at once
    kv = model.new_kv_cache(2)
    model.forward(tokens[:, :5], kv)
    for t in range(5, 9):
        step, cache = model.forward(tokens[:, t:t + 1], kv)        # one position, the compiled kernels
        np.testing.assert_allclose(step[:, 0], full[:, t], rtol=1e-5, atol=1e-5)
        assert cache["routing"][0]["experts"].shape == (2, cfg.top_k)


# ----------------------------------------------------------------------------------------------
# Malformed inputs: clear errors, never a crash or garbage
# ----------------------------------------------------------------------------------------------

def test_malformed_inputs_raise_clear_errors():
    qt = quant.quantize(rand(8, 64), "q4_0")
    with pytest.raises(KernelInputError, match=r"x must have shape \(\.\.\., 64\).*found \(2, 63\)"):
        matmul(rand(2, 63), qt)
    pw = pack(qt)
    with pytest.raises(KernelInputError, match="x must be float32, found float64"):
        qm.qmatmul(np.zeros((1, 64)), pw)
    stack = pack(quant.quantize(rand(3, 8, 64), "q8_0"))
    with pytest.raises(KernelInputError, match=r"experts must lie in 0\.\.2, found 0\.\.3"):
        qm.qmatmul(rand(2, 64), stack, np.array([0, 3]))
    with pytest.raises(KernelInputError, match="needs `experts`"):
        qm.qmatmul(rand(2, 64), stack)
    with pytest.raises(KernelInputError, match=r"experts must be int64 of shape \(2,\)"):
        qm.qmatmul(rand(2, 64), stack, np.array([0], np.int64))
    bad = PackedWeight("q4_0", (8, 64), pw.d[:, :, :1].copy(), pw.m, pw.qs, pw.G, pw.gguf_nbytes)
    with pytest.raises(KernelInputError, match=r"scales must be float32 \(1, 1, 32\), found float32 \(1, 1, 1\)"):
        bad.validate()
    bad = PackedWeight("q4_0", (8, 64), pw.d, pw.m, pw.qs[..., :1].copy(), pw.G, pw.gguf_nbytes)
    with pytest.raises(KernelInputError, match=r"values must be uint8 \(1, 1, 16, 32\)"):
        bad.validate()
    bad = PackedWeight("q4_0", (8, 64), pw.d, pw.m, pw.qs, 4, pw.gguf_nbytes)
    with pytest.raises(KernelInputError, match="rows per group must be 16, found 4"):
        bad.validate()
    with pytest.raises(quant.QuantError):                          # a truncated QTensor never reaches a kernel
        quant.QTensor("q4_0", (8, 64), qt.blocks[:, :-1].copy())
    with pytest.raises(KernelInputError, match="no fused kernel for format 'nf4'"):
        pack(quant.quantize(rand(4, 64), "nf4"))
    with pytest.raises(KernelInputError, match=r"expert ids must lie in 0\.\.3, found 0\.\.4"):
        mk.dispatch(np.array([[0, 4]]), 4)
    with pytest.raises(KernelInputError, match=r"order must be int64 \(4,\)"):
        mk.gather(rand(2, 3), np.arange(3), 2)
    with pytest.raises(KernelInputError, match=r"ys must be \(A=4, C\)"):
        mk.combine(rand(3, 5), np.arange(4), rand(2, 2))
    k = np.zeros((1, 1, 4, 8), np.float32)
    with pytest.raises(KernelInputError, match="5 new positions need 1..4 keys"):
        ops.attend(rand(1, 2, 5, 8), k, k, 0, None)
    with pytest.raises(KernelInputError, match=r"k and v must be \(B=1, G, S, D=8\)"):
        ops.attend(rand(1, 2, 1, 8), k[..., :4], k[..., :4], 0, None)
    with pytest.raises(KernelInputError, match="0 < K <= E"):
        ops.select(rand(2, 4), 5, "softmax_topk", True, 1.0)
    with pytest.raises(KernelInputError, match="weight must have shape"):
        norm.RMSNORM.numba(rand(2, 8), rand(7), 1e-5)


def test_float_gemv_rejects_bad_inputs():
    w = rand(3, 8, 16)
    with pytest.raises(KernelInputError, match=r"a stack of matrices needs `experts`, one index per row"):
        qm.fmatmul(rand(2, 16), w)
    with pytest.raises(KernelInputError, match=r"experts must lie in 0\.\.2, found 1\.\.5"):
        qm.fmatmul(rand(2, 16), w, np.array([1, 5]))
    with pytest.raises(KernelInputError, match="C-contiguous float32"):
        qm.fmatmul(rand(2, 16), w[0].astype(np.float64).astype(np.float16))


def test_float_gemv_choice_is_checked(monkeypatch):
    monkeypatch.setattr(qm, "FLOAT_GEMV", "mkl")
    with pytest.raises(KernelInputError, match=r"FLOAT_GEMV \(\$MINIMOE_FLOAT_GEMV\) must be 'blas' or 'numba', found 'mkl'"):
        qm.fmatmul(rand(2, 16), rand(8, 16))


def test_float64_activations_take_the_reference_path():
    qt = quant.quantize(rand(8, 64), "q4_0")
    x = np.random.default_rng(0).standard_normal((2, 64))
    y = matmul(x, qt)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, x @ qt.dequantize().astype(np.float64).T, rtol=1e-12)


def test_e2m1_from_bits_equals_the_table():
    """The gather-free E2M1 decode gives the OCP MX table (doubled) for all 16 codes."""
    e2m1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6]                       # the spec's magnitudes, bits e1 e0 m
    want = [2 * v for v in e2m1] + [-2 * v for v in e2m1]
    assert [float(qm.e2m1x2(np.uint32(c))) for c in range(16)] == want
    assert qm.MXFP4_LUT2.tolist() == want


@pytest.mark.parametrize("experts", [None, np.array([2, 0, 2, 1, 0, 2, 2])])
@pytest.mark.parametrize("rows", [7, 2])
def test_float_products_shared_out_to_threads(experts, rows, monkeypatch):
    """Large float products (a prefill's, or a decode GEMV over a large matrix) run as one-thread
    BLAS calls on minimoe's worker threads (by column block, or by expert): the matmul leaf hands
    them to float_matmul, which gives the same numbers as one BLAS call."""
    import minimoe.kernels as kernels
    from minimoe.kernels import qmatmul as qm
    x, w = rand(7, 48, seed=40)[:rows], rand(3, 33, 48, seed=41)
    ex = None if experts is None else experts[:rows]
    w2 = w[0] if ex is None else w
    calls = []
    real = qm.float_matmul
    monkeypatch.setattr(qm, "float_matmul", lambda *a: calls.append(a) or real(*a))   # (kernels reads it from the module)
    monkeypatch.setattr(kernels, "THREADS_MIN_MACS", 10**12)          # only the decode rule can apply
    monkeypatch.setattr(kernels, "THREADS_MIN_GEMV_WEIGHTS", 10**12)
    kernels.matmul_leaf(x, w2, None, ex)
    assert calls == []                                                 # small: not shared out
    setting = "THREADS_MIN_MACS" if rows > kernels.GEMV_ROWS else "THREADS_MIN_GEMV_WEIGHTS"
    monkeypatch.setattr(kernels, setting, 0)                           # every product counts as large
    w64 = w2.astype(np.float64)
    want = x @ w64.T if ex is None else np.einsum("ni,noi->no", x.astype(np.float64), w64[ex])
    got = kernels.matmul_leaf(x, w2, None, ex)
    assert len(calls) == 1
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _child_product(args):
    from minimoe.kernels import qmatmul as qmm
    from minimoe.kernels.backend import parallel_ok
    x, w = args
    return qmm.qmatmul(x, w), parallel_ok()


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(),
                    reason="no fork on this platform")
def test_a_forked_child_runs_the_kernels_on_one_core_with_the_same_numbers():
    """After the parent has run parallel kernels (OpenMP's pool started), a child forked by
    multiprocessing still multiplies (one-core compiles) instead of being stopped by GNU OpenMP."""
    import multiprocessing as mp
    import numba
    from minimoe.kernels import pack
    from minimoe.kernels.backend import parallel_ok
    from minimoe.kernels import qmatmul as qmm
    rng = np.random.default_rng(0)
    w = pack(minimoe.quant.quantize(rng.standard_normal((512, 1024)).astype(np.float32), "q4_0"))
    x = rng.standard_normal((1, 1024)).astype(np.float32)
    assert qmm.all_cores(512 * 1024)                     # the parent runs it in parallel
    parent = qmm.qmatmul(x, w)
    with mp.get_context("fork").Pool(1) as pool:
        child, child_parallel = pool.apply_async(_child_product, ((x, w),)).get(timeout=120)
    np.testing.assert_allclose(child, parent, rtol=1e-5, atol=1e-5 * np.abs(parent).max())
    assert parallel_ok()
    assert child_parallel is (numba.threading_layer() != "omp")
