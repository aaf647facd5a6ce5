"""Fuzzing every boundary that takes outside input, with hypothesis.

The property, everywhere: a clear MinimoeError, or a correct result. Never another exception, a
crash or a hang. "Correct" is checked against an oracle where there is one:

    safetensors files    the safetensors package itself: whatever we accept, it accepts too, and
                         the arrays are equal
    config.json          a model that loads runs: finite logits of the right shape
    tokenizer.json       a tokenizer that loads round-trips text of its own alphabet (a Hugging
                         Face one, with any field replaced, encodes and decodes without a raw error)
    packed metadata      a quantized model that loads equals the one saved
    generate / sample    ids in range; a sampled id is among the top_k and inside the top_p nucleus;
                         greedy decoding equals the argmax of uncached forward passes
    quantize             every block decodes as the format's readable loop decodes it, within the
                         format's error bound
    matmul               an accepted PackedWeight multiplies as its dequantized matrix does

By default the examples are few and derived from the test (no randomness between runs), so the
suite stays fast and deterministic in CI. For a long random run:

    MINIMOE_FUZZ=long python -m pytest -q tests/test_fuzz.py       # 40x the examples, new ones each run
"""
import contextlib
import dataclasses
import json
import os
import signal
import struct
import tempfile
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import minimoe
from minimoe.errors import MinimoeError
from minimoe.io.safetensors_file import read_tensors
from test_quant_properties import error_bound

safetensors_numpy = pytest.importorskip("safetensors.numpy")

LONG = os.environ.get("MINIMOE_FUZZ", "") == "long"


def fuzz(n: int):
    """Hypothesis settings for a fuzz test of n examples (40n under MINIMOE_FUZZ=long)."""
    return settings(max_examples=40 * n if LONG else n, deadline=None, derandomize=not LONG,
                    database=None if not LONG else settings.default.database,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


class Hang(Exception):
    pass


@contextlib.contextmanager
def no_hang(seconds: float = 20.0):
    """Fail an example that runs longer than `seconds` (a hang), instead of waiting forever."""
    def alarm(*_):
        raise Hang(f"no answer after {seconds} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def clear_error_or(fn):
    """fn()'s result, or None if it raised a MinimoeError with a message. Any other exception
    (or a hang) fails the example."""
    with no_hang():
        try:
            return fn()
        except MinimoeError as e:
            assert str(e).strip(), f"{type(e).__name__} without a message"
            return None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


# ------------------------------------------------------------------------------------------------
# safetensors: byte flips, truncations, headers
# ------------------------------------------------------------------------------------------------

def base_file() -> bytes:
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(5, dtype=np.uint8),
               "c": np.array([[-1, 7]], dtype=np.int64)}
    return safetensors_numpy.save(tensors, metadata={"format": "pt"})


BASE = base_file()


def agrees_with_safetensors(raw: bytes) -> None:
    """Read `raw` with our reader. If we accept it, the safetensors package must too, with
    the same arrays and metadata."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.safetensors")
        with open(path, "wb") as f:
            f.write(raw)
        got = clear_error_or(lambda: read_tensors(path))
    if got is None:
        return
    ours, meta = got
    try:
        theirs = safetensors_numpy.load(raw)
    except Exception as e:                                     # noqa: BLE001
        if "bfloat16" in str(e) or "BF16" in str(e) or "F8" in str(e):
            return                                             # numpy cannot hold it; we widen BF16
        raise AssertionError(f"we read a file the safetensors package rejects: {e}")
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert ours[k].shape == theirs[k].shape and np.array_equal(ours[k], theirs[k], equal_nan=True)


@fuzz(60)
@given(st.lists(st.tuples(st.integers(0, len(BASE) - 1), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(0, len(BASE)))
def test_safetensors_byte_flips_and_truncations(flips, keep):
    raw = bytearray(BASE)
    for pos, value in flips:
        raw[pos] = value
    agrees_with_safetensors(bytes(raw[:keep]))


@fuzz(60)
@given(st.integers(0, 8 + struct.unpack("<Q", BASE[:8])[0] - 1), st.binary(min_size=1, max_size=12))
def test_safetensors_header_splices(pos, junk):
    """Bytes inserted into the header (the length field kept right, so the JSON is what breaks)."""
    n = struct.unpack("<Q", BASE[:8])[0]
    header = BASE[8:8 + n]
    pos = min(pos, n)
    new = header[:pos] + junk + header[pos:]
    agrees_with_safetensors(struct.pack("<Q", len(new)) + new + BASE[8 + n:])


DTYPE_NAMES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "U16", "F8_E4M3"]
shapes = st.lists(st.integers(-2, 6) | st.sampled_from([2**31, 2**62, 2**64]), max_size=3)
entries = st.fixed_dictionaries({
    "dtype": st.sampled_from(DTYPE_NAMES) | json_values,
    "shape": shapes | json_values,
    "data_offsets": st.lists(st.integers(-4, 80), min_size=2, max_size=2) | json_values,
})


@fuzz(80)
@given(st.dictionaries(st.sampled_from(["a", "b", "c", "__metadata__"]), entries | json_values, max_size=4),
       st.integers(0, 80))
def test_safetensors_random_headers(header, data_len):
    """Random header JSON over random data bytes."""
    text = json.dumps(header).encode()
    agrees_with_safetensors(struct.pack("<Q", len(text)) + text + bytes(range(data_len)))


# ------------------------------------------------------------------------------------------------
# config.json, tokenizer.json and packed metadata of a checkpoint
# ------------------------------------------------------------------------------------------------

def tiny_model(**kw):
    from minimoe.tokenizer import CharTokenizer
    cfg = minimoe.Config(vocab_size=16, d_model=32, n_layers=1, n_heads=2, d_ff=32, n_experts=2, top_k=1,
                         max_seq_len=16, **kw)
    return minimoe.Model(cfg, seed=0, tokenizer=CharTokenizer("\n abcdefghijklmn"))


TINY = tiny_model()
CONFIG = json.loads(TINY.config.to_json())


@contextlib.contextmanager
def saved(model):
    with tempfile.TemporaryDirectory() as d:
        folder = os.path.join(d, "ckpt")
        model.save(folder)
        yield folder


def runs(model) -> None:
    """A loaded model must compute logits of the right shape for a short prompt. A legal but absurd
    config (router_scale=1e38) may overflow them; then generate must refuse with a clear error
    rather than print tokens."""
    logits = clear_error_or(lambda: model(np.array([1, 2, 3])))
    if logits is not None:
        assert logits.shape == (3, model.config.vocab_size)
        if not np.isfinite(logits).all():
            assert clear_error_or(lambda: model.generate(np.array([1, 2, 3]), 2)) is None


@fuzz(60)
@given(st.sampled_from(sorted(CONFIG)), json_values)
def test_config_field_replaced_by_random_json(field, value):
    cfg = dict(CONFIG, **{field: value})
    with saved(TINY) as folder:
        with open(os.path.join(folder, "config.json"), "w") as f:
            f.write(json.dumps(cfg))
        model = clear_error_or(lambda: minimoe.load(folder))
    if model is not None:
        assert model.config.to_dict() == minimoe.Config.from_dict(cfg).to_dict()
        runs(model)


@fuzz(40)
@given(json_values | st.binary(max_size=40))
def test_config_json_random(value):
    with saved(TINY) as folder:
        with open(os.path.join(folder, "config.json"), "wb") as f:
            f.write(value if isinstance(value, bytes) else json.dumps(value).encode())
        model = clear_error_or(lambda: minimoe.load(folder))
    assert model is None or model.config == TINY.config


@fuzz(40)
@given(st.dictionaries(st.sampled_from(sorted(CONFIG)), json_values, max_size=6))
def test_config_from_dict_random(d):
    cfg = clear_error_or(lambda: minimoe.Config.from_dict(d))
    if cfg is not None:
        assert minimoe.Config.from_dict(json.loads(cfg.to_json())) == cfg


tokenizer_dicts = st.fixed_dictionaries({"kind": st.sampled_from(["char", "byte"]) | json_values},
                                        optional={"chars": st.text(max_size=20) | json_values,
                                                  "special_tokens": st.lists(st.text(max_size=5), max_size=3) | json_values})


@fuzz(60)
@given(tokenizer_dicts | json_values)
def test_tokenizer_json_random(d):
    from minimoe.tokenizer import load_tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tokenizer.json")
        with open(path, "w") as f:
            f.write(json.dumps(d))
        tok = clear_error_or(lambda: load_tokenizer(path))
    if tok is None:
        return
    text = "".join(tok.chars[:5]) if tok.kind == "char" else "héllo, wörld"
    assert tok.decode(tok.encode(text)) == text


@fuzz(40)
@given(tokenizer_dicts)
def test_tokenizer_json_in_a_checkpoint(d):
    """A tokenizer that loads with a checkpoint fits its vocabulary: every id it encodes is
    embeddable and generate's output decodes."""
    with saved(TINY) as folder:
        with open(os.path.join(folder, "tokenizer.json"), "w") as f:
            f.write(json.dumps(d))
        model = clear_error_or(lambda: minimoe.load(folder))
    if model is not None and model.tokenizer is not None:
        ids = model.generate(np.array([1, 2]), 6, temperature=1.0, seed=0)
        assert isinstance(model.tokenizer.decode(ids), str)


HF_TOKENIZERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "tokenizers")
HF_FIELDS = ["version", "added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder", "model",
             "model.type", "model.vocab", "model.merges", "model.byte_fallback", "model.unk_token",
             "model.fuse_unk", "model.ignore_merges", "added_tokens.0", "model.merges.0"]


@fuzz(60)
@given(name=st.sampled_from(["gpt2", "llama2"]), field=st.sampled_from(HF_FIELDS), value=json_values,
       text=st.text(max_size=12))
def test_hf_tokenizer_json_with_a_field_replaced(name, field, value, text):
    """A Hugging Face tokenizer.json with one field replaced by random JSON: a clear error when
    loading, or a tokenizer whose encode and decode give a clear error or ids and text."""
    from minimoe.tokenizer import load_tokenizer
    with open(os.path.join(HF_TOKENIZERS, name, "tokenizer.json"), encoding="utf-8") as f:
        d = json.load(f)
    *path, last = field.split(".")
    node = d
    for key in path:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        if not node:
            return
        node[int(last)] = value
    else:
        node[last] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tokenizer.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(d, f)
        tok = clear_error_or(lambda: load_tokenizer(path))
    if tok is not None:
        ids = clear_error_or(lambda: tok.encode(text))
        if ids is not None:
            assert clear_error_or(lambda: tok.decode(ids)) is None or isinstance(tok.decode(ids), str)


QUANT = minimoe.quantize(TINY, "q4_0")


@fuzz(50)
@given(st.dictionaries(st.sampled_from(sorted(QUANT.params)), st.fixed_dictionaries(
    {"fmt": st.sampled_from(["q4_0", "q8_0", "nf4", "mxfp4"]) | json_values,
     "shape": st.lists(st.integers(-1, 64), max_size=3) | json_values}) | json_values, max_size=3)
       | json_values)
def test_packed_metadata_random(meta):
    from minimoe.io.safetensors_file import read_header
    with saved(QUANT) as folder:
        path = os.path.join(folder, "model.safetensors")
        header, metadata, start = read_header(path)
        with open(path, "rb") as f:
            data = f.read()[start:]
        packed = json.loads(metadata["minimoe.quant"])
        if isinstance(meta, dict):
            packed.update(meta)                                 # some entries changed, the rest kept
        else:
            packed = meta
        header["__metadata__"] = dict(metadata, **{"minimoe.quant": json.dumps(packed)})
        text = json.dumps(header).encode()
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text + data)
        model = clear_error_or(lambda: minimoe.load(folder))
    if model is not None:                                       # then it must be the model saved
        for name, w in QUANT.params.items():
            got = model.params[name]
            if hasattr(w, "blocks"):
                assert got.fmt == w.fmt and got.shape == w.shape and np.array_equal(got.blocks, w.blocks)
            else:
                assert np.array_equal(got, w)


# ------------------------------------------------------------------------------------------------
# generate and sample
# ------------------------------------------------------------------------------------------------

knobs = st.none() | st.booleans() | st.integers(-3, 40) | st.floats(-2, 3) | st.floats() | st.text(max_size=2)


@fuzz(80)
@given(temperature=knobs, top_k=knobs, top_p=knobs, max_new=knobs, seed=knobs,
       prompt=st.lists(st.integers(-2, 17), max_size=4) | st.text(max_size=3))
def test_generate_random_arguments(temperature, top_k, top_p, max_new, seed, prompt):
    out = clear_error_or(lambda: TINY.generate(np.array(prompt), max_new, temperature=temperature,
                                               top_k=top_k, top_p=top_p, seed=seed))
    if out is None:
        return
    assert out.shape == (len(prompt) + max_new,) and list(out[:len(prompt)]) == list(prompt)
    assert out.min() >= 0 and out.max() < TINY.config.vocab_size
    if temperature == 0 and max_new:                            # greedy: the uncached argmax chain
        seq = list(prompt)
        for _ in range(max_new):
            seq.append(int(TINY(np.array(seq[-16:]))[-1].argmax()))
        assert out.tolist() == seq


logits_arrays = arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 9)),
                       elements=st.floats(-30, 30, width=32) | st.sampled_from([np.nan, np.inf, -np.inf, 1e30]))


@fuzz(120)
@given(logits=logits_arrays, temperature=knobs, top_k=knobs, top_p=knobs)
def test_sample_random_arguments(logits, temperature, top_k, top_p):
    from minimoe.model import sample
    ids = clear_error_or(lambda: sample(logits, temperature, top_k, top_p, np.random.default_rng(0)))
    if ids is None:
        return
    assert np.isfinite(logits).all(), "sampled from non-finite logits"
    assert ids.shape == (logits.shape[0],) and ids.min() >= 0 and ids.max() < logits.shape[1]
    for row, i in zip(logits, ids):
        if temperature == 0:
            assert row[i] == row.max()
            continue
        if top_k is not None:                                   # among the k largest (ties count)
            assert row[i] >= np.sort(row)[-min(top_k, len(row))]
        if top_p is not None and top_k is None:                 # inside the nucleus
            z = row.astype(np.float64) / temperature
            p = np.exp(z - z.max())
            p /= p.sum()
            before = p[p > p[i]].sum()                          # mass of the strictly likelier tokens
            assert before < top_p + 1e-9


# ------------------------------------------------------------------------------------------------
# quantize
# ------------------------------------------------------------------------------------------------

FORMAT_NAMES = ["q8_0", "q4_0", "q4_1", "mxfp4", "nf4"]


@fuzz(80)
@given(x=arrays(np.float64, st.tuples(st.integers(0, 3), st.sampled_from([0, 1, 31, 32, 64, 96])),
                elements=st.just(0.0) | st.floats(-1e5, 1e5) | st.sampled_from([np.nan, np.inf, 1e39])),
       dtype=st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.int8, np.bool_, np.complex64]),
       fmt=st.sampled_from(FORMAT_NAMES) | st.sampled_from(["Q4_0", "q4_k", "q6_k", "q9_k", ""]) | json_values)
def test_quantize_random_arrays(x, dtype, fmt):
    from minimoe.quant import format_module, quantize
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)         # scales past fp16 are stored as inf,
        x = x.astype(dtype)                                     # as llama.cpp does, with a warning
        qt = clear_error_or(lambda: quantize(x, fmt))
    if qt is None:
        return
    spec = format_module(fmt)
    want = x.astype(np.float64)
    assert qt.shape == x.shape and np.isfinite(want).all()
    rows = qt.blocks.reshape(-1, spec.BLOCK_BYTES)
    with np.errstate(all="ignore"):
        got = qt.dequantize().reshape(-1, spec.BLOCK_SIZE)
        for k in range(min(len(rows), 4)):                      # the readable oracle, block by block
            np.testing.assert_array_equal(got[k], spec.dequantize_block_loop(rows[k]))
    amax = np.abs(want.reshape(-1, spec.BLOCK_SIZE)).max(axis=1, keepdims=True)
    if amax.size and amax.max() <= 6e4 and spec.NAME in FORMAT_NAMES:   # test_quant_properties' bounds
        assert (np.abs(got - want.reshape(got.shape)) <= error_bound(spec.NAME, amax)).all()


@fuzz(30)
@given(recipe=st.sampled_from(["q8_0", "q4_0", "mxfp4-moe", "fp32", "nonsense"]) | json_values
       | st.dictionaries(st.sampled_from(["experts", "attention", "norms", "nope"]),
                         st.sampled_from(FORMAT_NAMES) | json_values, max_size=2),
       strict=st.booleans())
def test_quantize_model_random_recipes(recipe, strict):
    q = clear_error_or(lambda: minimoe.quantize(TINY, recipe, strict=strict))
    if q is not None:
        runs(q)


# ------------------------------------------------------------------------------------------------
# matmul and the kernel boundary
# ------------------------------------------------------------------------------------------------

from minimoe.kernels import PackedWeight, pack                   # noqa: E402
from minimoe.quant.qtensor import quantize as quantize_array     # noqa: E402

PACKED = {fmt: pack(quantize_array(np.random.default_rng(1).normal(size=(40, 96)).astype(np.float32), fmt))
          for fmt in ("q4_0", "q4_1", "q8_0", "mxfp4")}


def array_like(a: np.ndarray):
    """Arrays near `a`: itself, other shapes, other dtypes, strided views, lists."""
    return st.one_of(
        st.just(a),
        st.just(a.astype(np.float64)), st.just(a.view(np.uint8)), st.just(a.ravel()),
        st.just(a[..., :1].copy()), st.just(np.concatenate([a, a], axis=1)), st.just(a[:, ::-1]),
        st.just(np.lib.stride_tricks.as_strided(a, a.shape, (0,) * a.ndim)),
        st.just(a.tolist()), st.just(np.zeros((0,) * a.ndim, a.dtype)))


@fuzz(120)
@given(data=st.data(), fmt=st.sampled_from(sorted(PACKED)),
       field=st.sampled_from(["fmt", "shape", "d", "m", "qs", "G", "none"]),
       rows=st.integers(0, 7), width=st.sampled_from([96, 95, 32, 0]),
       xdtype=st.sampled_from([np.float32, np.float64, np.int32]))
def test_matmul_packed_weight_with_random_fields(data, fmt, field, rows, width, xdtype):
    pw = PACKED[fmt]
    if field == "fmt":
        value = data.draw(st.sampled_from(["q4_0", "q4_1", "q8_0", "mxfp4", "nf4", "Q4_0"]) | json_values)
    elif field == "shape":
        value = data.draw(st.tuples(st.integers(-1, 80), st.integers(-32, 200)) | st.just((1, 40, 96))
                          | st.tuples(st.integers(0, 3), st.integers(1, 80), st.sampled_from([32, 96]))
                          | json_values)
    elif field == "G":
        value = data.draw(st.integers(-1, 32) | json_values)
    elif field == "none":
        value = None
    else:
        value = data.draw(array_like(getattr(pw, field)))
    bad = pw if field == "none" else dataclasses.replace(pw, **{field: value})
    x = np.random.default_rng(rows).normal(size=(rows, width)).astype(xdtype)
    y = clear_error_or(lambda: minimoe.matmul(x, bad))
    if y is None:
        return
    # accepted: then the weight is consistent, and the product is the dequantized one's
    from minimoe.kernels.qmatmul import dequantize
    w = dequantize(bad)
    assert y.shape == (rows, w.shape[0])
    np.testing.assert_allclose(y, x.astype(np.float64) @ w.T.astype(np.float64), rtol=1e-3, atol=1e-3)


@fuzz(60)
@given(x=arrays(st.sampled_from([np.float32, np.float64, np.int64, np.bool_]),
                st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)),
       w=arrays(st.sampled_from([np.float32, np.float64, np.int8]),
                st.lists(st.integers(0, 4), min_size=1, max_size=3).map(tuple)))
def test_matmul_float_random_shapes(x, w):
    y = clear_error_or(lambda: minimoe.matmul(x, w))
    if y is not None:
        assume(np.isfinite(x).all() and np.isfinite(w).all())
        np.testing.assert_allclose(y, x @ w.T, rtol=1e-5, atol=1e-5)
