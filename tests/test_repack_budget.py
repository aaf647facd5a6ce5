"""The repack budget (minimoe/kernels/packed.py): a large packed weight held in memory is copied
into the kernels' layout only while those copies fit the budget; past it, matmul_leaf multiplies
it as stored (stored_gemv.py) and says so once on stderr.

Oracles: the dequantized weight times x (the product), the nbytes of the arrays repack and
quad_words really make (the cost the budget charges), the process's VmRSS (the copy is or is not
made). "Large" is lowered to 4 KiB here so that the tensors stay small.
"""
import numpy as np
import pytest

import minimoe
import minimoe.kernels as kernels
from minimoe.kernels import matmul_leaf, packed, stored_gemv
from minimoe.kernels.packed import kernel_copy_bytes, repack, repack_budget, repack_report, set_repack_budget
from minimoe.quant import quantize

SMALL = 4096


@pytest.fixture(autouse=True)
def small_large_weights(monkeypatch):
    """Weights of >= 4 KiB count as large; the budget starts unset and is unset again afterwards."""
    monkeypatch.setattr(kernels, "STORED_MIN_BYTES", SMALL)
    monkeypatch.delenv("MINIMOE_REPACK_BUDGET", raising=False)
    previous = set_repack_budget(None)
    yield
    set_repack_budget(previous)


@pytest.fixture
def calls_to_stored(monkeypatch):
    """The weights matmul_leaf hands to stored_gemv.matmul_stored, in order."""
    seen = []
    real = stored_gemv.matmul_stored

    def spy(x, qt, experts=None):
        seen.append(qt.name)
        return real(x, qt, experts)
    monkeypatch.setattr(stored_gemv, "matmul_stored", spy)
    return seen


def _stack(fmt, name, seed=0, shape=(6, 40, 128)):
    rng = np.random.default_rng(seed)
    return quantize(rng.standard_normal(shape).astype(np.float32), fmt, name=name)   # (E, O, I)


def _want(x, qt, experts):
    dense = qt.dequantize()                                                      # (E, O, I)
    return np.stack([dense[e] @ x[r] for r, e in enumerate(experts)])            # (R, O)


@pytest.mark.parametrize("fmt", ["q4_0", "q8_0", "mxfp4"])
@pytest.mark.parametrize("rows", [1, 3, 7])
def test_a_weight_past_the_budget_is_read_as_stored_and_computes_the_same(fmt, rows, calls_to_stored):
    w = _stack(fmt, f"layers.0.moe.experts.{fmt}")
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 128)).astype(np.float32)
    experts = rng.integers(0, 6, rows)
    set_repack_budget(kernel_copy_bytes(w, packed_int8()) - 1)                    # one byte short
    got = matmul_leaf(x, w, None, experts)
    assert calls_to_stored == [w.name]
    assert "_packed" not in w.__dict__                                           # no copy was made
    assert repack_report()["refused"] == {w.name: kernel_copy_bytes(w, packed_int8())}
    np.testing.assert_allclose(got, _want(x, w, experts), rtol=1e-4, atol=1e-4)
    from minimoe.kernels.qmatmul import qmatmul                                 # the repacked path,
    previous = minimoe.set_activation_precision("float")                       # x kept float as here
    try:
        np.testing.assert_allclose(got, qmatmul(x, repack(w), experts), rtol=1e-4, atol=1e-4)
    finally:
        minimoe.set_activation_precision(previous)


def packed_int8() -> bool:
    from minimoe.kernels.qmatmul import int8_activations
    return int8_activations()


def test_under_the_budget_weights_are_repacked_and_charged_until_it_is_spent(calls_to_stored, capsys):
    a, b, c = (_stack("q8_0", f"layers.{i}.moe.experts.gate", seed=i) for i in range(3))
    cost = kernel_copy_bytes(a, packed_int8())
    set_repack_budget(2 * cost)                                                  # room for two
    x = np.ones((1, 128), np.float32)
    experts = np.array([2])
    for w in (a, b, c, a, c):
        np.testing.assert_allclose(matmul_leaf(x, w, None, experts), _want(x, w, experts), rtol=1e-4, atol=1e-4)
    assert calls_to_stored == [c.name, c.name]                                  # the third, each time
    assert "_packed" in a.__dict__ and "_packed" in b.__dict__ and "_packed" not in c.__dict__
    assert repack_report()["used"] >= 2 * cost
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and c.name in err and "repack budget" in err
    assert "set_repack_budget" in err and "MINIMOE_REPACK_BUDGET" in err
    d = _stack("q8_0", "layers.3.moe.experts.gate", seed=3)                      # a second refusal:
    matmul_leaf(x, d, None, experts)                                             # listed, not told again
    assert capsys.readouterr().err == "" and set(repack_report()["refused"]) == {c.name, d.name}


def test_small_weights_are_always_repacked(calls_to_stored):
    set_repack_budget(0)
    w = _stack("q4_0", "attn.q", shape=(8, 64))                                  # 288 bytes < 4 KiB
    x = np.ones((2, 64), np.float32)
    np.testing.assert_allclose(matmul_leaf(x, w), x @ w.dequantize().T, rtol=1e-4, atol=1e-4)
    assert calls_to_stored == [] and "_packed" in w.__dict__


def test_a_new_budget_takes_refused_weights_again(calls_to_stored):
    w = _stack("q4_0", "layers.0.moe.experts.up")
    x, experts = np.ones((1, 128), np.float32), np.array([0])
    set_repack_budget(0)
    matmul_leaf(x, w, None, experts)
    set_repack_budget(10**12)
    matmul_leaf(x, w, None, experts)
    assert calls_to_stored == [w.name] and "_packed" in w.__dict__


@pytest.mark.parametrize("fmt", ["q4_0", "q4_1", "q8_0", "mxfp4"])
def test_the_cost_charged_is_the_bytes_the_kernels_make(fmt):
    """kernel_copy_bytes against the nbytes of the arrays repack() and quad_words() return, on a
    ragged stack (O = 37: the last group is padded)."""
    from minimoe.kernels.int8matmul import quad_words
    w = _stack(fmt, "w", shape=(3, 37, 96))
    pw = repack(w)
    made = pw.d.nbytes + pw.m.nbytes + pw.qs.nbytes
    assert kernel_copy_bytes(w, int8=False) == made
    assert kernel_copy_bytes(w, int8=True) == made + quad_words(pw).nbytes


def test_the_budget_comes_from_the_environment_or_the_memory_available(monkeypatch):
    monkeypatch.setenv("MINIMOE_REPACK_BUDGET", "0")
    assert repack_budget() == 0
    set_repack_budget(None)
    monkeypatch.setenv("MINIMOE_REPACK_BUDGET", "2e9")
    assert repack_budget() == 2 * 10**9
    set_repack_budget(None)
    monkeypatch.setenv("MINIMOE_REPACK_BUDGET", "lots")
    with pytest.raises(minimoe.MinimoeError, match="MINIMOE_REPACK_BUDGET.*'lots'"):
        repack_budget()
    set_repack_budget(None)
    monkeypatch.delenv("MINIMOE_REPACK_BUDGET")
    total = packed.os.sysconf("SC_PAGE_SIZE") * packed.os.sysconf("SC_PHYS_PAGES")
    assert 0 < repack_budget() <= packed.REPACK_SHARE * total
    with pytest.raises(minimoe.MinimoeError, match="set_repack_budget.*-1"):
        set_repack_budget(-1)


RSS_SCRIPT = """
import json, numpy as np
import minimoe.kernels as kernels
from minimoe.kernels import matmul_leaf
from minimoe.kernels.packed import set_repack_budget
from minimoe.quant import quantize

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

kernels.STORED_MIN_BYTES = 4096
x, experts = np.ones((1, 4096), np.float32), np.array([5])
weights = {b: quantize(np.random.default_rng(b).standard_normal((8, 1024, 4096), np.float32), "q8_0",
                       name=f"big{b}") for b in (0, 1, 2)}                     # 36 MB of blocks each
set_repack_budget(0)
matmul_leaf(x, weights[2], None, experts)                       # compile and start the threads
grown = {}
for b, budget in ((0, 0), (1, 10**12)):
    set_repack_budget(budget)
    before = rss()
    matmul_leaf(x, weights[b], None, experts)
    grown[budget] = rss() - before
print(json.dumps(grown))
"""


@pytest.mark.skipif(not packed.os.path.exists("/proc/self/status"), reason="needs /proc")
def test_past_the_budget_no_copy_stays_in_memory():
    """A 36 MB q8_0 stack, in a fresh process: repacked, the process holds its copies (>= 30 MB
    more); past the budget it does not (less than 8 MB more)."""
    import json
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", RSS_SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    grown = {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}
    assert grown[0] < 8e6 and grown[10**12] > 30e6, grown


def test_weights_that_read_the_same_x_go_as_stored_past_the_budget_on_the_int8_path(calls_to_stored):
    """matmul_many_leaf (an expert's gate and up in one int8 call) leaves the fused call for the
    stored path when a weight is past the budget, and still gives the product."""
    from minimoe.kernels import matmul_many_leaf
    gate, up = _stack("q4_0", "layers.0.moe.experts.gate", 1), _stack("q4_0", "layers.0.moe.experts.up", 2)
    x, experts = np.random.default_rng(0).standard_normal((2, 128)).astype(np.float32), np.array([4, 1])
    previous = minimoe.set_activation_precision("int8")
    try:
        set_repack_budget(0)
        ys = matmul_many_leaf(x, [gate, up], [None, None], experts)
    finally:
        minimoe.set_activation_precision(previous)
    assert calls_to_stored == [gate.name, up.name] and "_packed" not in gate.__dict__
    for y, w in zip(ys, (gate, up)):
        np.testing.assert_allclose(y, _want(x, w, experts), rtol=1e-4, atol=1e-4)
