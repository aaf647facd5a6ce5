"""Memory-mapped loading (minimoe/io/mapped.py): tensors are views of the file, bf16/fp16 weights
stay 16-bit and matmul reads them as stored, recipes quantize while loading, memory stays bounded
and one decoded token pages in only what it reads.

Oracles: the same checkpoint widened to float32 (bf16 -> float32 is exact, so the bf16 model must
compute the same logits up to summation order); minimoe.quantize applied after loading (quantizing
while loading must give the same bytes); the trace's routing (which experts a token used) against
/proc/self/pagemap (which experts' pages the process holds); getrusage's peak RSS in a subprocess.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import minimoe
from minimoe.io.pages import is_mapped, resident_bytes
from minimoe.io.safetensors_file import read_header
from minimoe.kernels import matmul, matmul_leaf
from minimoe.nn.linear import matmul as matmul_twin
from minimoe.quant import QTensor, quantize

HALF = {"attention": "bf16", "experts": "bf16", "ffn": "bf16", "shared_experts": "bf16", "head": "fp16"}
PAGEMAP = os.path.exists("/proc/self/pagemap")


def _stored(v):
    return v.blocks if isinstance(v, QTensor) else v


@pytest.fixture(scope="module")
def half_ckpt(tmp_path_factory):
    """A tiny gpt-oss-like model with bf16/fp16 matrices, saved: BF16 and F16 in the file."""
    model = minimoe.quantize(minimoe.Model(minimoe.Config.preset("tiny-gpt-oss"), seed=0), HALF)
    folder = tmp_path_factory.mktemp("half")
    model.save(folder)
    return folder


def test_bf16_and_fp16_are_stored_as_such_and_loaded_as_views(half_ckpt):
    header = read_header(half_ckpt / "model.safetensors")[0]
    assert header["layers.0.attn.q.weight"]["dtype"] == "BF16"
    assert header["head.weight"]["dtype"] == "F16"
    model = minimoe.load(half_ckpt)
    q, head = model.params["layers.0.attn.q.weight"], model.params["head.weight"]
    assert (q.fmt, head.fmt) == ("bf16", "fp16")
    for name, v in model.params.items():                        # every matrix a view of the file
        if np.ndim(_stored(v)) >= 2 and "router" not in name:
            assert is_mapped(_stored(v)), name
    assert isinstance(model.params["layers.0.attn_norm.weight"], np.ndarray)   # vectors: float32
    assert model.params["layers.0.attn_norm.weight"].dtype == np.float32
    assert list(model.params) == list(minimoe.Model(model.config).params)      # the model's order


def test_bf16_model_computes_what_its_float32_widening_computes(half_ckpt):
    held = minimoe.load(half_ckpt)
    wide = minimoe.load(half_ckpt, dtype=np.float32)
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in wide.params.values())
    tokens = np.array([3, 141, 59, 26, 5, 35, 89])
    ref = wide(tokens)                                           # (T, V) prefill
    np.testing.assert_allclose(held(tokens), ref, rtol=1e-5, atol=1e-5)
    with minimoe.backend("numpy"):
        np.testing.assert_allclose(held(tokens), ref, rtol=1e-5, atol=1e-5)
    kv = held.new_kv_cache(1, 16)                                # decode, one token at a time
    for t, tok in enumerate(tokens):
        step, _ = held.forward(np.array([[tok]]), kv)
        np.testing.assert_allclose(step[0, 0], ref[t], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(held.generate(tokens[:3], 6), wide.generate(tokens[:3], 6))


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
@pytest.mark.parametrize("rows", [1, 3, 7])
def test_matmul_leaf_reads_half_weights_as_its_twin_does(fmt, rows):
    rng = np.random.default_rng(rows)
    w = quantize(rng.standard_normal((5, 37, 19)).astype(np.float32), fmt)   # (E, O, I) ragged
    x = rng.standard_normal((rows, 19)).astype(np.float32)
    b = rng.standard_normal((5, 37)).astype(np.float32)
    experts = rng.integers(0, 5, rows)
    dense = w.dequantize()                                       # the oracle: widened, then BLAS
    want = np.stack([x[r] @ dense[experts[r]].T + b[experts[r]] for r in range(rows)])
    np.testing.assert_allclose(matmul_leaf(x, w, b, experts), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(matmul_twin(x, w, b, experts), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(matmul_leaf(x, w[2]), x @ dense[2].T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(matmul(x, w[2]), x @ dense[2].T, rtol=1e-5, atol=1e-5)


def test_embedding_of_a_bf16_table_decodes_only_its_rows():
    table = quantize(np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32), "bf16")
    ids = np.array([[4, 49, 4]])
    np.testing.assert_array_equal(table.rows(ids), table.dequantize()[ids])


@pytest.mark.parametrize("recipe", ["q8_0", "q4_0", "mxfp4-moe"])
def test_quantizing_while_loading_gives_the_bytes_of_quantizing_after(half_ckpt, recipe, monkeypatch):
    from minimoe.io import mapped
    monkeypatch.setattr(mapped, "R_CHUNK", 64)                   # many pieces per tensor
    got = minimoe.load(half_ckpt, recipe=recipe)
    want = minimoe.quantize(minimoe.load(half_ckpt, dtype=np.float32), recipe)
    assert set(got.params) == set(want.params)
    for name, w in want.params.items():
        g = got.params[name]
        if isinstance(w, QTensor):
            assert isinstance(g, QTensor) and g.fmt == w.fmt, name
            np.testing.assert_array_equal(g.blocks, w.blocks, err_msg=name)


def test_experts_recipe_keeps_the_rest_as_stored(half_ckpt):
    model = minimoe.load(half_ckpt, recipe="experts-mxfp4")
    assert model.params["layers.0.moe.experts.gate"].fmt == "mxfp4"
    assert model.params["layers.0.attn.q.weight"].fmt == "bf16"
    assert is_mapped(model.params["layers.0.attn.q.weight"].blocks)
    assert not is_mapped(model.params["layers.0.moe.experts.gate"].blocks)     # new bytes


def test_packed_weights_load_as_views(tmp_path):
    model = minimoe.quantize(minimoe.Model(minimoe.Config.preset("tiny-gpt-oss"), seed=1), "mxfp4-moe")
    model.save(tmp_path)
    loaded = minimoe.load(tmp_path)
    for name, v in loaded.params.items():
        if isinstance(v, QTensor):
            assert is_mapped(v.blocks), name
            np.testing.assert_array_equal(v.blocks, model.params[name].blocks)


def test_a_loaded_float32_model_still_trains_in_place(tmp_path):
    """F32 tensors are mapped copy-on-write: an in-place update changes memory, not the file."""
    minimoe.Model(minimoe.Config.preset("tiny-moe"), seed=0).save(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    model = minimoe.load(tmp_path)
    w = model.params["layers.0.attn.q.weight"]
    assert is_mapped(w) and w.flags.writeable
    w -= 1.0
    assert (tmp_path / "model.safetensors").read_bytes() == before


@pytest.mark.skipif(not PAGEMAP, reason="needs /proc/self/pagemap (Linux)")
def test_one_token_pages_in_only_the_experts_it_was_routed_to(tmp_path):
    """gpt-oss's widths (one mxfp4 expert matrix is 4.4 MB) with 8 experts, one layer. The kernel
    maps a file's page cache into the process a whole folio at a time (up to 2 MB on this
    machine's kernel), so an expert beside a routed one may be partly present, never whole."""
    from minimoe.bench.big import PRESETS, expert_pages, write_checkpoint
    cfg = minimoe.Config.preset("gpt-oss-20b").replace(
        name="gpt-oss-wide", vocab_size=1024, n_layers=1, n_experts=8, top_k=2, sliding_layers=[],
        max_seq_len=64)
    write_checkpoint(cfg, PRESETS["gpt-oss-20b"].storage, tmp_path, progress=lambda m: None)
    model = minimoe.load(tmp_path)                               # the finiteness scan gave its pages back
    mapped = [_stored(v) for v in model.params.values() if is_mapped(_stored(v))]
    assert len(mapped) == 9 and sum(resident_bytes(a) for a in mapped) == 0   # embed, head, 7 matrices
    with minimoe.trace() as t:
        model.forward(np.array([[7]]), model.new_kv_cache(1, 4))
    routed = set(t.routing()[0]["experts"][0].tolist())
    fractions = expert_pages(model)[0]
    assert {e for e, f in enumerate(fractions) if f >= 0.99} == routed, fractions
    embed = model.params["embed.weight"].blocks                  # (V, 2C) bytes: row 7 and its folio
    assert resident_bytes(embed[7]) > 0 and resident_bytes(embed) <= 2 * 2**20 + 2 * 4096


RSS_CHILD = """
import json, sys, minimoe
from minimoe.bench.big import held_bytes, peak_rss_bytes, rss_bytes
start = rss_bytes()
model = minimoe.load(sys.argv[1], recipe=None if sys.argv[2] == "none" else sys.argv[2])
print(json.dumps({"start": start, "peak": peak_rss_bytes(), "after": rss_bytes(), "held": held_bytes(model)}))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="peak RSS")
def test_loading_keeps_peak_rss_within_the_bound(tmp_path):
    """A ~260 MB bf16 checkpoint (OLMoE's layout), loaded as stored and quantized to q8_0 while
    loading: peak RSS <= 1.15 x the bytes the model holds + 300 MB."""
    from minimoe.bench.big import write_checkpoint
    cfg = minimoe.Config.preset("olmoe-1b-7b").replace(
        name="olmoe-mini", vocab_size=8192, d_model=1024, d_expert=512, n_layers=1, n_heads=8,
        n_kv_heads=8, max_seq_len=64)
    stored = write_checkpoint(cfg, {}, tmp_path, progress=lambda m: None)
    assert 200e6 < stored < 400e6
    for recipe in ("none", "q8_0"):
        done = subprocess.run([sys.executable, "-c", RSS_CHILD, str(tmp_path), recipe],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        r = json.loads(done.stdout.strip().splitlines()[-1])
        assert r["held"] > (stored if recipe == "none" else 0.5 * stored)
        assert r["peak"] <= 1.15 * r["held"] + 300 * 2**20, (recipe, r)
        if recipe == "none":                                     # mapped, not copied: a copy would stay
            assert r["after"] - r["start"] < 0.1 * r["held"], r  # resident, >= held


@pytest.mark.parametrize("fmt", ["q4_0", "q8_0", "mxfp4"])
@pytest.mark.parametrize("rows", [1, 4, 9])
def test_stored_gemv_and_its_twin_agree_with_dequantize(fmt, rows):
    """stored_gemv.py, the path of a memory-mapped packed weight: kernel, twin and the format's
    own decoder agree on a ragged stack (O = 37), for the GEMV (rows <= 4) and the tile path."""
    from minimoe.kernels.stored_gemv import FMT_ID, gemv_stored, matmul_stored
    rng = np.random.default_rng(rows)
    w = quantize(rng.standard_normal((5, 37, 96)).astype(np.float32), fmt)      # (E, O, I)
    x = rng.standard_normal((rows, 96)).astype(np.float32)
    experts = rng.integers(0, 5, rows)
    dense = w.dequantize()
    want = np.stack([dense[experts[r]] @ x[r] for r in range(rows)])            # (R, O)
    np.testing.assert_allclose(matmul_stored(x, w, experts), want, rtol=1e-5, atol=1e-5)
    twin = np.empty((rows, 37), np.float32)
    gemv_stored.numpy(x, w.blocks, experts, FMT_ID[fmt], twin)
    np.testing.assert_allclose(twin, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(matmul_stored(x[:1], w[3]), x[:1] @ dense[3].T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["q4_0", "q8_0", "mxfp4"])
def test_stored_gemv_reads_every_byte_value(fmt):
    """Blocks of random bytes (every code, q8_0's -128 included; scales set to small finite
    values), so the offsets gemv_stored takes out of its sums (q - 8, the byte ^ 0x80) meet every case."""
    from minimoe.kernels.stored_gemv import matmul_stored
    rng = np.random.default_rng(7)
    w = quantize(np.zeros((3, 21, 160), np.float32), fmt)                        # (E, O, I), layout only
    blocks = rng.integers(0, 256, w.blocks.shape, dtype=np.uint8).reshape(-1, w.format.BLOCK_BYTES)
    if fmt == "mxfp4":
        blocks[:, 0] = rng.integers(120, 134, len(blocks))                       # E8M0: 2^-8 .. 2^5
    else:
        blocks[:, :2] = np.float16(0.01 * rng.random(len(blocks))).view(np.uint8).reshape(-1, 2)
    w = QTensor(fmt, w.shape, blocks.reshape(w.blocks.shape))
    x = rng.standard_normal((2, 160)).astype(np.float32)
    experts = np.array([2, 0])
    dense = w.dequantize()
    want = np.stack([dense[e] @ x[r] for r, e in enumerate(experts)])
    np.testing.assert_allclose(matmul_stored(x, w, experts), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("experts, gemv", [([7, 1, 3, 0, 5, 2, 6, 4], True),     # a token's K = 8 experts
                                            ([1, 1, 1, 1, 1, 2], False)])       # 5 rows of one matrix
def test_stored_matmul_takes_the_gemv_when_no_matrix_has_more_than_4_rows(experts, gemv, monkeypatch):
    """halfmatmul.stack_matmul: a decode step's K rows go to the GEMV for any K (each is one
    expert's only row); a matrix with more than 4 rows is decoded in tiles for BLAS. Both equal
    the dequantized product."""
    from minimoe.kernels import stored_gemv
    calls = []                                                   # the GEMV kernel, spied on
    real = stored_gemv.gemv_stored

    def spy(*args):
        calls.append(1)
        return real(*args)
    spy.serial = lambda *args: calls.append(1) or real.serial(*args)
    monkeypatch.setattr(stored_gemv, "gemv_stored", spy)
    rng = np.random.default_rng(3)
    w = quantize(rng.standard_normal((8, 40, 64)).astype(np.float32), "q4_0")     # (E, O, I)
    x = rng.standard_normal((len(experts), 64)).astype(np.float32)
    experts = np.array(experts)
    dense = w.dequantize()
    want = np.stack([dense[e] @ x[r] for r, e in enumerate(experts)])
    np.testing.assert_allclose(stored_gemv.matmul_stored(x, w, experts), want, rtol=1e-5, atol=1e-5)
    assert bool(calls) == gemv


def test_bench_big_refuses_an_unknown_preset_by_name(capsys):
    from minimoe.cli import main
    assert main(["bench", "big", "--preset", "mixtral-8x7b", "--dir", "/nonexistent"]) == 1
    err = capsys.readouterr().err
    assert "--preset must be one of gpt-oss-20b, olmoe-1b-7b, qwen3-30b-a3b" in err and "mixtral-8x7b" in err


def test_load_with_an_unknown_recipe_names_the_recipes(half_ckpt):
    with pytest.raises(minimoe.MinimoeError, match="(?s)unknown recipe 'q3_0'.*experts-mxfp4"):
        minimoe.load(half_ckpt, recipe="q3_0")


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_half_formats_decode_every_bit_pattern_as_their_oracle(fmt):
    """bf16.py and fp16.py as QTensor formats: all 65,536 values, against the readable loop."""
    from minimoe.quant import format_module
    spec = format_module(fmt)
    blocks = np.arange(65536, dtype="<u2").view(np.uint8).reshape(-1, 2)          # (65536, 2)
    got = spec.dequantize_blocks(blocks)[:, 0]
    want = np.array([spec.dequantize_block_loop(b)[0] for b in blocks[::97]])     # a spread of them
    np.testing.assert_array_equal(got[::97], want)
    np.testing.assert_array_equal(spec.nonfinite_blocks(blocks), ~np.isfinite(got))
    x = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    from minimoe.quant.bf16 import bf16_to_float32, float32_to_bf16
    rounded = x.astype(np.float16).astype(np.float32) if fmt == "fp16" else bf16_to_float32(float32_to_bf16(x))
    np.testing.assert_array_equal(quantize(x, fmt).dequantize(), rounded)     # round to nearest even


def test_bench_big_header_names_the_recipe_the_run_used():
    """The header describes the run, not the preset's default: --recipe q4_0 or none say so."""
    from minimoe.bench.big import PRESETS, describe
    olmoe = PRESETS["olmoe-1b-7b"]
    assert describe(olmoe, olmoe.recipe) == "bf16 on disk, q8_0 while loading"
    assert describe(olmoe, "q4_0") == "bf16 on disk, q4_0 while loading"
    assert describe(olmoe, None) == "bf16 on disk, held as stored"
    assert describe(PRESETS["gpt-oss-20b"], None).startswith("as released: MXFP4 experts")
