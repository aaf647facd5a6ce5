"""The reliability sweep: bad inputs and faults against minimoe's CLI and API, each case in its own
process, each outcome put in one class:

    correct result     valid input, right answer (or a bad input handled as documented)
    clear error        a MinimoeError (the CLI: one "minimoe X: error: ..." line, exit 1) or an
                       argparse usage error, that names the file, field or flag
    refused valid      a clear error for input that should have worked
    raw traceback      any other exception (a NumPy, json or OS error from deep inside)
    crash              the process died of a signal (segfault)
    hang               still running after the time limit (or a process left running)
    silent wrong       no error, but a wrong result, an accepted bad input, or an error message
                       that leaks bytes of a file it should not have opened
    lost data          after a kill, the last good checkpoint no longer loads

    python tests/reliability/sweep.py                      # this checkout, a table on stdout
    python tests/reliability/sweep.py --root /tmp/old      # another checkout (the "before")
    python tests/reliability/sweep.py --json out.json --only kernels,sampling
    python tests/reliability/sweep.py --compare before.json after.json     # one table of both

The case functions below run in the child process with `minimoe` imported from --root. They use
only public API that also existed before the sweep's fixes, so one script measures both sides.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
CLASSES = ["correct result", "clear error", "refused valid", "raw traceback", "crash", "hang",
           "silent wrong", "lost data"]


@dataclass
class Case:
    category: str
    name: str
    fn: object
    valid: bool          # True: the input is valid, a clear error would be a wrong refusal


CASES: list[Case] = []


def case(category: str, name: str, valid: bool = False):
    def deco(fn):
        CASES.append(Case(category, name, fn, valid))
        return fn
    return deco


class Clear(Exception):
    """The CLI printed one clear error line (or argparse a usage error)."""


class Outcome(Exception):
    """A case decided its own class (lost data, hang, silent wrong with a reason)."""

    def __init__(self, cls: str, detail: str = ""):
        super().__init__(detail)
        self.cls = cls


# ------------------------------------------------------------------------------------------------
# Helpers that run in the child
# ------------------------------------------------------------------------------------------------

CHARS = "\n abcdefghijklmn"                     # 16 characters, sorted: the tiny model's vocabulary
TEXT = "".join(f"{CHARS[2 + i % 14]}{CHARS[15 - i % 11]} " * 3 + "\n" for i in range(400))


def cli(*argv):
    """Run `minimoe ARGV` in this process: (stdout, stderr) on exit 0; Clear on a clean error."""
    from minimoe.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:                  # argparse
            rc = e.code
    o, e = out.getvalue(), err.getvalue()
    if rc != 0 and "error:" in e and "Traceback" not in e:
        raise Clear(e.strip().splitlines()[-1])
    if rc != 0:
        raise RuntimeError(f"exit {rc}: {e[-500:]}")
    return o, e


def tiny_model(seed=0, vocab=16, tokenizer=True, **kw):
    import minimoe
    from minimoe.tokenizer import CharTokenizer
    cfg = minimoe.Config(vocab_size=vocab, d_model=32, n_layers=1, n_heads=2, d_ff=32, n_experts=2,
                         top_k=1, max_seq_len=16, **kw)
    return minimoe.Model(cfg, seed=seed, tokenizer=CharTokenizer(CHARS[:vocab]) if tokenizer else None)


def tiny_ckpt(path="ckpt", **kw):
    m = tiny_model(**kw)
    m.save(path)
    return m, path


def quant_ckpt(path="qckpt"):
    import minimoe
    m = minimoe.quantize(tiny_model(), "q4_0")
    m.save(path)
    return m, path


def read_st(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_st(path, header, data):
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + data)


def edit_header(fn, path="ckpt/model.safetensors"):
    """Rewrite the safetensors header of a fresh tiny checkpoint with fn(header), then load it."""
    import minimoe
    tiny_ckpt()
    header, data = read_st(path)
    out = fn(header)
    write_st(path, header if out is None else out, data)
    minimoe.load(os.path.dirname(path))
    return False                                  # loaded: the bad header was accepted


def edit_config(fn, folder="ckpt", raw=None):
    import minimoe
    tiny_ckpt(folder)
    path = os.path.join(folder, "config.json")
    if raw is not None:
        open(path, "wb").write(raw)
    else:
        cfg = json.load(open(path))
        out = fn(cfg)
        open(path, "w").write(out if isinstance(out, str) else json.dumps(cfg if out is None else out))
    minimoe.load(folder)
    return False


def hf_copy(name="hf_mixtral_gqa", dest="hf"):
    shutil.copytree(os.path.join(FIXTURES, name), dest)
    return dest


def edit_hf_config(fn, name="hf_mixtral_mha"):
    import minimoe
    folder = hf_copy(name)
    path = os.path.join(folder, "config.json")
    cfg = json.load(open(path))
    fn(cfg)
    json.dump(cfg, open(path, "w"))
    minimoe.load(folder)
    return False


def edit_index(fn):
    import minimoe
    folder = hf_copy()
    path = os.path.join(folder, "model.safetensors.index.json")
    index = json.load(open(path))
    out = fn(index, folder)
    open(path, "w").write(out if isinstance(out, str) else json.dumps(index))
    return minimoe.load(folder)


def edit_quant_meta(fn):
    import minimoe
    quant_ckpt()
    path = "qckpt/model.safetensors"
    header, data = read_st(path)
    meta = header["__metadata__"]
    out = fn(json.loads(meta["minimoe.quant"]), header)
    if out is not None:
        meta["minimoe.quant"] = out if isinstance(out, str) else json.dumps(out)
    write_st(path, header, data)
    minimoe.load("qckpt")
    return False


def edit_tokenizer(text, vocab=16):
    import minimoe
    tiny_ckpt(vocab=vocab)
    open("ckpt/tokenizer.json", "wb").write(text if isinstance(text, bytes) else text.encode())
    m = minimoe.load("ckpt")
    m.tokenizer.decode(m.generate(m.tokenizer.encode("ab"), 8, temperature=1.0, seed=0))
    return False


def data_file(path="text.txt"):
    open(path, "w").write(TEXT)
    return path


TRAIN = ["--preset", "tiny-moe", "--max-iters", "4", "--block-size", "8", "--batch-size", "2",
         "--eval-interval", "0", "--eval-iters", "1", "--sample-tokens", "0", "--threads", "1",
         "--warmup-iters", "1", "--quiet"]


def train_run(out="run", *extra):
    cli("train", "--data", data_file(), "--out", out, *TRAIN, *extra)
    return out


def packed_weight(fmt="q4_0", O=64, I=64):
    import numpy as np

    import minimoe
    from minimoe.kernels import pack
    from minimoe.quant.qtensor import quantize
    w = np.random.default_rng(0).normal(size=(O, I)).astype(np.float32)
    return w, pack(quantize(w, fmt))


def matmul_with(**changes):
    """minimoe.matmul(x, PackedWeight(...)) with some of the packed arrays replaced."""
    import dataclasses

    import numpy as np

    import minimoe
    w, pw = packed_weight()
    bad = dataclasses.replace(pw, **changes)
    x = np.ones((1, 64), np.float32)
    minimoe.matmul(x, bad)
    return False


def scenario(name: str, lose_on: str):
    """Run a crash scenario of faults.py; `lose_on` picks what counts: "lost" or "tmp"."""
    sys.path.insert(0, HERE)
    import faults
    out = faults.run_scenario(name, os.path.abspath(f"crash-{name}"))
    lost = [r for r in out["results"] if not r["ok"] and "temporary files" not in r["why"]]
    tmp = [r for r in out["results"] if not r["ok"] and "temporary files" in r["why"]]
    n = len(out["results"])
    if lose_on == "lost" and lost:
        raise Outcome("lost data", f"{len(lost)} of {n} kill points lose it, e.g. before "
                                   f"'{lost[0]['label']}': {lost[0]['why']}")
    if lose_on == "tmp" and tmp:
        raise Outcome("silent wrong", f"{len(tmp)} of {n} kill points leave temporary files: {tmp[0]['why']}")
    return True


# ------------------------------------------------------------------------------------------------
# safetensors headers
# ------------------------------------------------------------------------------------------------
CAT = "safetensors header"
NORM_A, NORM_B = "layers.0.attn_norm.weight", "layers.0.ffn_norm.weight"


def _set(name, key, value):
    def fn(h):
        h[name][key] = value
    return fn


for label, fn in [
    ("file truncated to half", None),
    ("dtype is a number", _set(NORM_A, "dtype", 7)),
    ("dtype unknown ('F8')", _set(NORM_A, "dtype", "F8")),
    ("shape has a negative entry", _set(NORM_A, "shape", [-1, -32])),
    ("shape has a float entry", _set(NORM_A, "shape", [32.0])),
    ("shape overflows int64", _set(NORM_A, "shape", [2**62, 2**62, 4])),
    ("shape is a string", _set(NORM_A, "shape", "32")),
    ("shape has a bool", _set(NORM_A, "shape", [True, 32])),
    ("offsets are floats", lambda h: h[NORM_A].update(data_offsets=[float(x) for x in h[NORM_A]["data_offsets"]])),
    ("offsets are strings", lambda h: h[NORM_A].update(data_offsets=[str(x) for x in h[NORM_A]["data_offsets"]])),
    ("offsets have three entries", lambda h: h[NORM_A].update(data_offsets=h[NORM_A]["data_offsets"] + [0])),
    ("offsets reversed", lambda h: h[NORM_A].update(data_offsets=h[NORM_A]["data_offsets"][::-1])),
    ("offsets past the end of the file", lambda h: h[NORM_A].update(
        data_offsets=[10**9, 10**9 + 128])),
    ("two tensors overlap (one reads the other's bytes)", lambda h: h[NORM_B].update(
        data_offsets=list(h[NORM_A]["data_offsets"]))),
    ("__metadata__ is a list", lambda h: h.update(__metadata__=["format", "minimoe"])),
    ("__metadata__ value is a number", lambda h: h.update(__metadata__={"format": 1})),
    ("entry without data_offsets", lambda h: h[NORM_A].pop("data_offsets") and None),
    ("entry is a string", lambda h: h.update({NORM_A: "F32"})),
    ("header is a JSON list", lambda h: [h]),
    ("header is not UTF-8", lambda h: b'{"\xff\xfe": 1}'),
    ("header is not JSON", lambda h: b"{not json"),
    ("header nested 100000 deep", lambda h: b"[" * 100000 + b"]" * 100000),
    ("duplicate tensor name in the header", lambda h: json.dumps(h)[:-1].encode()
        + b', "' + NORM_A.encode() + b'": ' + json.dumps(h[NORM_A]).encode() + b"}"),
]:
    def make(fn=fn, label=label):
        def run(work):
            if fn is None:
                import minimoe
                tiny_ckpt()
                p = "ckpt/model.safetensors"
                raw = open(p, "rb").read()
                open(p, "wb").write(raw[:len(raw) // 2])
                minimoe.load("ckpt")
                return False
            return edit_header(fn)
        return run
    case(CAT, label)(make())


@case(CAT, "header length field larger than the file")
def _(work):
    import minimoe
    tiny_ckpt()
    p = "ckpt/model.safetensors"
    raw = open(p, "rb").read()
    open(p, "wb").write(struct.pack("<Q", 2**40) + raw[8:])
    minimoe.load("ckpt")
    return False


@case(CAT, "empty file")
def _(work):
    import minimoe
    tiny_ckpt()
    open("ckpt/model.safetensors", "wb").close()
    minimoe.load("ckpt")
    return False


@case(CAT, "a NaN written into a weight's bytes")
def _(work):
    import numpy as np

    import minimoe
    m, _ = tiny_ckpt()
    header, data = read_st("ckpt/model.safetensors")
    b = header[NORM_A]["data_offsets"][0]
    data = data[:b] + np.float32(np.nan).tobytes() + data[b + 4:]
    write_st("ckpt/model.safetensors", header, data)
    minimoe.load("ckpt")
    return False


@case(CAT, "valid file written by the safetensors package", valid=True)
def _(work):
    import numpy as np
    from safetensors.numpy import load_file, save_file

    import minimoe
    m, _ = tiny_ckpt()
    t = load_file("ckpt/model.safetensors")
    save_file(t, "ckpt/model.safetensors", metadata={"format": "pt"})
    m2 = minimoe.load("ckpt")
    return all(np.array_equal(m.params[k], m2.params[k]) for k in m.params)


# ------------------------------------------------------------------------------------------------
# config.json of a minimoe checkpoint
# ------------------------------------------------------------------------------------------------
CAT = "config.json"
for label, fn, raw in [
    ("not JSON", None, b"{oops"),
    ("not UTF-8", None, '{"model_type": "minimoe", "name": "caf\xe9"}'.encode("latin-1")),
    ("nested 100000 deep", None, b'{"a": ' + b"[" * 100000 + b"]" * 100000 + b"}"),
    ("a JSON list", lambda c: [c], None),
    ("dense_layers: 1", lambda c: c.update(dense_layers=1), None),
    ("sliding_layers: ['a']", lambda c: c.update(sliding_layers=["a"], sliding_window=4), None),
    ("vocab_size: '16' (a string)", lambda c: c.update(vocab_size="16"), None),
    ("vocab_size: 16.0 (a float)", lambda c: c.update(vocab_size=16.0), None),
    ("vocab_size: true", lambda c: c.update(vocab_size=True), None),
    ("n_heads: 0", lambda c: c.update(n_heads=0), None),
    ("max_seq_len: 2**50", lambda c: c.update(max_seq_len=2**50), None),
    ("rope_theta: 'abc'", lambda c: c.update(rope_theta="abc"), None),
    ("rope_theta: Infinity", lambda c: json.dumps(c).replace('"rope_theta": 10000.0', '"rope_theta": Infinity'), None),
    ("norm_eps: NaN", lambda c: json.dumps(c).replace('"norm_eps": 1e-05', '"norm_eps": NaN'), None),
    ("rope_scaling: 'yarn' (a string)", lambda c: c.update(rope_scaling="yarn"), None),
    ("rope_scaling without factor", lambda c: c.update(rope_scaling={"type": "yarn"}), None),
    ("router_renorm: 'no' (a string)", lambda c: c.update(router_renorm="no"), None),
    ("name: 5 (a number)", lambda c: c.update(name=5), None),
    ("unknown field", lambda c: c.update(n_expertz=4), None),
    ("model_type missing", lambda c: c.pop("model_type") and c, None),
    ("model_type: 5", lambda c: c.update(model_type=5), None),
    ("top_k > n_experts", lambda c: c.update(top_k=3), None),
    ("n_heads does not divide d_model", lambda c: c.update(n_heads=3, head_dim=None, n_kv_heads=None), None),
]:
    def make(fn=fn, raw=raw):
        return lambda work: edit_config(fn, raw=raw)
    case(CAT, label)(make())


@case(CAT, "config.json missing")
def _(work):
    import minimoe
    tiny_ckpt()
    os.remove("ckpt/config.json")
    minimoe.load("ckpt")
    return False


@case(CAT, "config.json is a folder")
def _(work):
    import minimoe
    tiny_ckpt()
    os.remove("ckpt/config.json")
    os.mkdir("ckpt/config.json")
    minimoe.load("ckpt")
    return False


@case(CAT, "model folder is a file")
def _(work):
    import minimoe
    open("notafolder", "w").write("x")
    minimoe.load("notafolder")
    return False


@case(CAT, "valid checkpoint round trip", valid=True)
def _(work):
    import numpy as np

    import minimoe
    m, _ = tiny_ckpt()
    m2 = minimoe.load("ckpt")
    return m2.config == m.config and np.array_equal(m2(np.arange(8)), m(np.arange(8)))


# ------------------------------------------------------------------------------------------------
# Hugging Face folders
# ------------------------------------------------------------------------------------------------
CAT = "HF folder"


@case(CAT, "shard index names ../ (a file outside the folder)")
def _(work):
    def fn(index, folder):
        shutil.copytree(folder, "elsewhere")
        index["weight_map"] = {k: "../elsewhere/" + v for k, v in index["weight_map"].items()}
    edit_index(fn)
    return False


@case(CAT, "shard index names a system file (/etc/passwd)")
def _(work):
    from minimoe.errors import MinimoeError
    target = "/etc/passwd"
    leaked = open(target, "rb").read(8)

    def fn(index, folder):
        first = next(iter(index["weight_map"]))
        index["weight_map"][first] = target
    try:
        edit_index(fn)
    except MinimoeError as e:
        msg = str(e)
        n = struct.unpack("<Q", leaked.ljust(8, b"\0"))[0]
        if str(n) in msg or leaked.decode("latin-1") in msg:
            raise Outcome("silent wrong", f"opens {target}; the error leaks its first bytes: {msg[:160]}")
        if msg.startswith(target):
            raise Outcome("silent wrong", f"opens {target}, outside the model folder: {msg[:160]}")
        raise
    return False


@case(CAT, "shard index weight_map is a list")
def _(work):
    edit_index(lambda index, folder: index.update(weight_map=list(index["weight_map"].items())))
    return False


@case(CAT, "shard index weight_map value is a number")
def _(work):
    edit_index(lambda index, folder: index["weight_map"].update({next(iter(index["weight_map"])): 5}))
    return False


@case(CAT, "shard index is not JSON")
def _(work):
    edit_index(lambda index, folder: "{nope")
    return False


@case(CAT, "shard index names a missing shard")
def _(work):
    def fn(index, folder):
        os.remove(os.path.join(folder, "model-00002-of-00003.safetensors"))
    edit_index(fn)
    return False


@case(CAT, "the same tensor in two shards")
def _(work):
    def fn(index, folder):
        name = "model.norm.weight"
        src = os.path.join(folder, index["weight_map"][name])
        dst = next(os.path.join(folder, f) for f in sorted(set(index["weight_map"].values()))
                   if os.path.join(folder, f) != src)
        h1, d1 = read_st(src)
        h2, d2 = read_st(dst)
        b, e = h1[name]["data_offsets"]
        h2[name] = dict(h1[name], data_offsets=[len(d2), len(d2) + e - b])
        write_st(dst, h2, d2 + bytes(e - b))      # a second, different copy (zeros) in another shard
    edit_index(fn)
    return False


@case(CAT, "a shard truncated")
def _(work):
    import minimoe
    folder = hf_copy()
    p = os.path.join(folder, "model-00003-of-00003.safetensors")
    raw = open(p, "rb").read()
    open(p, "wb").write(raw[:-100])
    minimoe.load(folder)
    return False


for label, fn in [
    ("hidden_size: 'abc'", lambda c: c.update(hidden_size="abc")),
    ("hidden_size missing", lambda c: c.pop("hidden_size")),
    ("tie_word_embeddings: 'false' (a string)", lambda c: c.update(tie_word_embeddings="false")),
    ("rope_parameters is a list", lambda c: c.update(rope_parameters=[1, 2])),
    ("rope_scaling is a string", lambda c: c.update(rope_scaling="yarn")),
    ("max_position_embeddings: 2**50", lambda c: c.update(max_position_embeddings=2**50)),
    ("num_local_experts: -1", lambda c: c.update(num_local_experts=-1)),
    ("rms_norm_eps: 'x'", lambda c: c.update(rms_norm_eps="x")),
    ("model_type unknown", lambda c: c.update(model_type="mamba")),
]:
    def make(fn=fn):
        return lambda work: edit_hf_config(fn)
    case(CAT, "config " + label)(make())


@case(CAT, "valid sharded folder (transformers v5 naming)", valid=True)
def _(work):
    import numpy as np

    import minimoe
    from minimoe.io.safetensors_file import read_tensors
    m = minimoe.load(hf_copy())
    want, _ = read_tensors(os.path.join("hf", "expected.safetensors"))
    got = m(want["tokens"])
    return np.allclose(got, want["logits"], atol=1e-3, rtol=1e-3)


# ------------------------------------------------------------------------------------------------
# packed-tensor metadata of a quantized checkpoint
# ------------------------------------------------------------------------------------------------
CAT = "packed metadata"
QNAME = "layers.0.attn.q.weight"
for label, fn in [
    ("not JSON", lambda meta, h: "{nope"),
    ("a JSON list", lambda meta, h: [1, 2]),
    ("an entry without fmt", lambda meta, h: meta[QNAME].pop("fmt") and meta),
    ("fmt unknown", lambda meta, h: meta[QNAME].update(fmt="q9_k") or meta),
    ("fmt is a number", lambda meta, h: meta[QNAME].update(fmt=4) or meta),
    ("shape does not match the bytes", lambda meta, h: meta[QNAME].update(shape=[64, 32]) or meta),
    ("shape is a string", lambda meta, h: meta[QNAME].update(shape="32,32") or meta),
    ("an entry is a number", lambda meta, h: meta.update({QNAME: 3}) or meta),
    ("names a tensor the file lacks", lambda meta, h: meta.update(ghost={"fmt": "q4_0", "shape": [32, 32]}) or meta),
    ("a packed tensor stored as F32", lambda meta, h: h[QNAME].update(
        dtype="F32", shape=[h[QNAME]["shape"][0] * h[QNAME]["shape"][1] // 4]) or meta),
]:
    def make(fn=fn):
        return lambda work: edit_quant_meta(fn)
    case(CAT, label)(make())


@case(CAT, "valid quantized round trip", valid=True)
def _(work):
    import numpy as np

    import minimoe
    m, _ = quant_ckpt()
    m2 = minimoe.load("qckpt")
    return np.array_equal(m2(np.arange(8)), m(np.arange(8)))


# ------------------------------------------------------------------------------------------------
# tokenizer.json
# ------------------------------------------------------------------------------------------------
CAT = "tokenizer.json"
for label, text, vocab in [
    ("not JSON", "{nope", 16),
    ("not UTF-8", b'{"kind": "char", "chars": "\xff\xfe"}', 16),
    ("nested 100000 deep", "[" * 100000 + "]" * 100000, 16),
    ("a JSON list", "[1, 2]", 16),
    ("kind unknown", '{"kind": "bpe"}', 16),
    ("chars is a number", '{"kind": "char", "chars": 5}', 16),
    ("chars missing", '{"kind": "char"}', 16),
    ("chars repeat", '{"kind": "char", "chars": "aab"}', 16),
    ("chars empty", '{"kind": "char", "chars": ""}', 16),
    ("special_tokens is a string", '{"kind": "byte", "special_tokens": "<eos>"}', 300),
    ("special_tokens holds a number", '{"kind": "byte", "special_tokens": [5]}', 300),
    ("larger than the model's vocabulary", json.dumps({"kind": "char", "chars": CHARS + "qrstu"}), 16),
    ("smaller than the model's vocabulary", '{"kind": "char", "chars": "abcd"}', 16),
]:
    def make(text=text, vocab=vocab):
        return lambda work: edit_tokenizer(text, vocab)
    case(CAT, label)(make())


@case(CAT, "valid byte tokenizer with a larger vocabulary", valid=True)
def _(work):
    import minimoe
    from minimoe.tokenizer import ByteTokenizer
    m = tiny_model(vocab=300, tokenizer=False)
    m.tokenizer = ByteTokenizer()
    m.save("ckpt")
    m2 = minimoe.load("ckpt")
    return m2.tokenizer.decode(m2.tokenizer.encode("héllo")) == "héllo"


# ------------------------------------------------------------------------------------------------
# the kernel boundary: minimoe.matmul
# ------------------------------------------------------------------------------------------------
CAT = "matmul / kernels"


@case(CAT, "PackedWeight: qs with fewer rows than the shape says")
def _(work):
    import numpy as np
    _, pw = packed_weight()
    return matmul_with(qs=np.ascontiguousarray(pw.qs[:, :0]), shape=(4096, 64))


@case(CAT, "PackedWeight: scales a strided view (2**36-byte steps)")
def _(work):
    import numpy as np
    _, pw = packed_weight()
    return matmul_with(d=np.lib.stride_tricks.as_strided(pw.d, shape=pw.d.shape, strides=(0, 2**36, 4)))


@case(CAT, "PackedWeight: shape larger than the arrays")
def _(work):
    return matmul_with(shape=(100000, 64))


@case(CAT, "PackedWeight: scales float64")
def _(work):
    _, pw = packed_weight()
    return matmul_with(d=pw.d.astype("float64"))


@case(CAT, "PackedWeight: wrong rows per group")
def _(work):
    return matmul_with(G=1)


@case(CAT, "PackedWeight: unknown format")
def _(work):
    return matmul_with(fmt="q9_k")


@case(CAT, "PackedWeight: 1-D shape")
def _(work):
    return matmul_with(shape=(64,))


@case(CAT, "PackedWeight: m of the wrong rank")
def _(work):
    import numpy as np
    return matmul_with(m=np.zeros(3, np.float32))


@case(CAT, "PackedWeight: qs uint8 for q8_0")
def _(work):
    import numpy as np
    _, pw = packed_weight()
    return matmul_with(fmt="q8_0", qs=np.zeros((1, pw.qs.shape[1], 32, pw.qs.shape[3]), np.uint8))


@case(CAT, "PackedWeight: arrays are lists")
def _(work):
    return matmul_with(d=[1.0, 2.0])


@case(CAT, "float weight, x of the wrong width")
def _(work):
    import numpy as np

    import minimoe
    minimoe.matmul(np.ones((2, 5), np.float32), np.ones((3, 4), np.float32))
    return False


@case(CAT, "QTensor nf4 with integer x")
def _(work):
    import numpy as np

    import minimoe
    from minimoe.quant.qtensor import quantize
    w = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)
    qt = quantize(w, "nf4")
    x = np.ones((1, 64), np.int64)
    y = minimoe.matmul(x, qt)
    return bool(np.allclose(y, x.astype(np.float32) @ qt.dequantize().T, atol=1e-4))


@case(CAT, "QTensor q4_0 with x of the wrong width")
def _(work):
    import numpy as np

    import minimoe
    from minimoe.quant.qtensor import quantize
    qt = quantize(np.ones((4, 64), np.float32), "q4_0")
    minimoe.matmul(np.ones((1, 32), np.float32), qt)
    return False


@case(CAT, "w is a list")
def _(work):
    import numpy as np

    import minimoe
    minimoe.matmul(np.ones((1, 2), np.float32), [[1.0, 2.0]])
    return False


@case(CAT, "valid packed q4_0 matmul, 1 and 9 rows", valid=True)
def _(work):
    import numpy as np

    import minimoe
    from minimoe.quant.qtensor import quantize
    w = np.random.default_rng(1).normal(size=(40, 96)).astype(np.float32)
    qt = quantize(w, "q4_0")
    ok = True
    for R in (1, 9):
        x = np.random.default_rng(R).normal(size=(R, 96)).astype(np.float32)
        ok &= np.allclose(minimoe.matmul(x, qt), x @ qt.dequantize().T, atol=1e-3)
    return bool(ok)


# ------------------------------------------------------------------------------------------------
# sampling and generate (the API)
# ------------------------------------------------------------------------------------------------
CAT = "sample / generate"


def _sample(**kw):
    import numpy as np

    from minimoe.model import sample
    logits = np.random.default_rng(0).normal(size=(2, 16)).astype(np.float32)
    args = dict(temperature=1.0, top_k=None, top_p=None)
    args.update(kw)
    sample(logits, args["temperature"], args["top_k"], args["top_p"], np.random.default_rng(0))
    return False


for label, kw in [
    ("top_p = 0", dict(top_p=0.0)),
    ("top_p = NaN", dict(top_p=float("nan"))),
    ("top_p = -0.5", dict(top_p=-0.5)),
    ("top_p = 1.5", dict(top_p=1.5)),
    ("temperature = NaN", dict(temperature=float("nan"))),
    ("temperature = inf", dict(temperature=float("inf"))),
    ("temperature = -1", dict(temperature=-1.0)),
    ("top_k = 0", dict(top_k=0)),
    ("top_k = -3", dict(top_k=-3)),
    ("top_k = 2.5", dict(top_k=2.5)),
    ("top_k = '2' (a string)", dict(top_k="2")),
]:
    def make(kw=kw):
        return lambda work: _sample(**kw)
    case(CAT, "sample " + label)(make())


@case(CAT, "sample top_k larger than the vocabulary", valid=True)
def _(work):
    import numpy as np

    from minimoe.model import sample
    logits = np.zeros((1, 16), np.float32)
    logits[0, 3] = 50.0
    return sample(logits, 1.0, 1000, None, np.random.default_rng(0)).tolist() == [3]


def _generate(prompt=(1, 2, 3), max_new=3, **kw):
    import numpy as np
    m = tiny_model()
    m.generate(np.asarray(prompt) if not isinstance(prompt, str) else prompt, max_new, **kw)
    return False


for label, kw in [
    ("max_new_tokens = -1", dict(max_new=-1)),
    ("max_new_tokens = 2.5", dict(max_new=2.5)),
    ("max_new_tokens = '3'", dict(max_new="3")),
    ("seed = -1", dict(seed=-1, temperature=1.0)),
    ("seed = 'x'", dict(seed="x", temperature=1.0)),
    ("temperature = NaN", dict(temperature=float("nan"))),
    ("top_p = 0", dict(temperature=1.0, top_p=0.0)),
    ("prompt id = vocab_size", dict(prompt=(1, 16))),
    ("prompt is empty", dict(prompt=())),
    ("prompt holds floats", dict(prompt=(1.5, 2.0))),
    ("prompt is a string", dict(prompt="abc")),
]:
    def make(kw=kw):
        return lambda work: _generate(**kw)
    case(CAT, "generate " + label)(make())


@case(CAT, "generate greedy with a NaN weight")
def _(work):
    import numpy as np
    m = tiny_model()
    m.params[NORM_A][3] = np.nan
    m.generate(np.array([1, 2]), 4)
    return False


@case(CAT, "generate greedy equals the uncached argmax loop", valid=True)
def _(work):
    import numpy as np
    m = tiny_model()
    seq = [1, 2, 3]
    for _ in range(20):                          # past max_seq_len = 16: the crop
        seq.append(int(m(np.array(seq[-16:]))[-1].argmax()))
    return m.generate(np.array([1, 2, 3]), 20).tolist() == seq


@case(CAT, "generate a batch of two prompts, sampled", valid=True)
def _(work):
    import numpy as np
    m = tiny_model()
    out = m.generate(np.array([[1, 2], [3, 4]]), 5, temperature=0.9, top_k=5, top_p=0.9, seed=1)
    return out.shape == (2, 7) and out.min() >= 0 and out.max() < 16


# ------------------------------------------------------------------------------------------------
# quantize (the API)
# ------------------------------------------------------------------------------------------------
CAT = "quantize"


@case(CAT, "unknown recipe")
def _(work):
    import minimoe
    minimoe.quantize(tiny_model(), "q9_k")
    return False


@case(CAT, "recipe is a number")
def _(work):
    import minimoe
    minimoe.quantize(tiny_model(), 4)
    return False


@case(CAT, "recipe dict with an unknown component")
def _(work):
    import minimoe
    minimoe.quantize(tiny_model(), {"nonsense": "q4_0"})
    return False


@case(CAT, "a model quantized twice")
def _(work):
    import minimoe
    minimoe.quantize(minimoe.quantize(tiny_model(), "q4_0"), "q4_0")
    return False


@case(CAT, "model with a NaN weight")
def _(work):
    import numpy as np

    import minimoe
    m = tiny_model()
    m.params["layers.0.attn.q.weight"][0, 0] = np.nan
    minimoe.quantize(m, "q8_0")
    return False


for label, arr, fmt in [
    ("array with NaN", "np.full((2, 32), np.nan, np.float32)", "q4_0"),
    ("width not a multiple of 32", "np.ones((2, 33), np.float32)", "q4_0"),
    ("complex array", "np.ones((2, 32), np.complex64)", "q8_0"),
    ("0-d array", "np.float32(1.0)", "q8_0"),
    ("format is None", "np.ones((2, 32), np.float32)", None),
    ("object array", "np.array([[object()] * 32])", "q8_0"),
]:
    def make(arr=arr, fmt=fmt):
        def run(work):
            import numpy as np  # noqa: F401 (used by eval)

            from minimoe.quant.qtensor import quantize
            quantize(eval(arr), fmt)
            return False
        return run
    case(CAT, "tensor: " + label)(make())


@case(CAT, "valid q8_0 model quantization", valid=True)
def _(work):
    import numpy as np

    import minimoe
    m = tiny_model()
    q = minimoe.quantize(m, "q8_0")
    return bool(np.allclose(q(np.arange(8)), m(np.arange(8)), atol=0.05))


# ------------------------------------------------------------------------------------------------
# CLI flags
# ------------------------------------------------------------------------------------------------
CAT = "CLI flags"


def _eval(*flags):
    tiny_ckpt()
    data_file()
    return cli("eval", "--model", "ckpt", "--data", "text.txt", "--json", *flags)


@case(CAT, "eval --batch-size -1")
def _(work):
    out, _ = _eval("--batch-size", "-1")
    truth = json.loads(_eval_truth())
    got = json.loads(out)
    return abs(got["loss"] - truth["loss"]) < 1e-9


def _eval_truth():
    return cli("eval", "--model", "ckpt", "--data", "text.txt", "--json", "--batch-size", "8")[0]


@case(CAT, "eval --batch-size 0")
def _(work):
    _eval("--batch-size", "0")
    return False


@case(CAT, "eval --max-tokens -5")
def _(work):
    _eval("--max-tokens", "-5")
    return False


@case(CAT, "eval --block-size 0")
def _(work):
    _eval("--block-size", "0")
    return False


@case(CAT, "eval with a char tokenizer whose characters are not sorted", valid=True)
def _(work):
    import minimoe
    from minimoe.evaluate import evaluate
    from minimoe.tokenizer import CharTokenizer
    m = tiny_model()
    m.tokenizer = CharTokenizer(CHARS[::-1])
    m.save("ckpt")
    data_file()
    got = json.loads(cli("eval", "--model", "ckpt", "--data", "text.txt", "--json", "--split", "all")[0])
    ids = m.tokenizer.encode(TEXT)
    return abs(got["loss"] - evaluate(minimoe.load("ckpt"), ids)["loss"]) < 1e-9


@case(CAT, "eval --batch-size 3 equals --batch-size 8", valid=True)
def _(work):
    a = json.loads(_eval("--batch-size", "3")[0])
    b = json.loads(_eval_truth())
    return abs(a["loss"] - b["loss"]) < 1e-9


def _generate_cli(*flags):
    tiny_ckpt()
    return cli("generate", "--model", "ckpt", "--max-new-tokens", "3", *flags)


for label, flags in [
    ("--prompt-ids 99999999999999999999 (overflows)", ["--prompt-ids", "99999999999999999999"]),
    ("--prompt-ids 1,,2", ["--prompt-ids", "1,,2"]),
    ("--prompt-ids -1", ["--prompt-ids", "-1"]),
    ("--top-p 0", ["--prompt", "ab", "--top-p", "0"]),
    ("--temperature nan", ["--prompt", "ab", "--temperature", "nan"]),
    ("--top-k 0", ["--prompt", "ab", "--top-k", "0"]),
    ("--seed -1", ["--prompt", "ab", "--seed", "-1"]),
    ("--max-new-tokens -1", ["--prompt", "ab", "--max-new-tokens", "-1"]),
    ("--prompt with a character outside the vocabulary", ["--prompt", "xyz"]),
]:
    def make(flags=flags):
        def run(work):
            _generate_cli(*flags)
            return False
        return run
    case(CAT, "generate " + label)(make())


@case(CAT, "generate --prompt-ids 1,2 --temperature 0", valid=True)
def _(work):
    out, _ = _generate_cli("--prompt-ids", "1,2", "--temperature", "0")
    return len(out.strip().split(",")) == 5 if "," in out else len(out.strip()) > 0


for label, flags in [
    ("--set nosuch=1", ["--set", "nosuch=1"]),
    ("--set dense_layers=1", ["--set", "dense_layers=1"]),
    ("--set n_experts=abc", ["--set", "n_experts=abc"]),
    ("--max-iters 0", ["--max-iters", "0"]),
    ("--lr nan", ["--lr", "nan"]),
    ("--threads -1", ["--threads", "-1"]),
    ("--val-fraction 2", ["--val-fraction", "2"]),
]:
    def make(flags=flags):
        def run(work):
            train_run("run", *flags)
            return False
        return run
    case(CAT, "train " + label)(make())


@case(CAT, "train --sample-temperature nan (refused before training?)")
def _(work):
    try:
        train_run("run", "--sample-temperature", "nan", "--sample-tokens", "5")
    except Clear:
        if os.path.exists("run/checkpoint/LATEST"):
            raise Outcome("silent wrong", "trained and checkpointed, then refused the flag at the end")
        raise
    return False


@case(CAT, "train --resume DIR (missing)")
def _(work):
    cli("train", "--resume", "nowhere")
    return False


@case(CAT, "train --resume DIR whose LATEST names ../")
def _(work):
    train_run()
    shutil.copytree("run/checkpoint", "outside")
    open("run/checkpoint/LATEST", "w").write("../../outside/step-000004\n")
    cli("train", "--resume", "run", "--max-iters", "6", "--quiet")
    return False


@case(CAT, "train --resume DIR repeating the same --data and --preset", valid=True)
def _(work):
    train_run()
    cli("train", "--resume", "run", "--data", "text.txt", "--preset", "tiny-moe", "--max-iters", "6", "--quiet")
    return json.load(open("run/metrics.json"))["iters"] == 6


@case(CAT, "train --resume DIR with a different --preset")
def _(work):
    train_run()
    cli("train", "--resume", "run", "--preset", "tiny", "--max-iters", "6", "--quiet")
    return False


@case(CAT, "train --resume DIR with a different --set")
def _(work):
    train_run()
    cli("train", "--resume", "run", "--set", "top_k=1", "--max-iters", "6", "--quiet")
    return False


@case(CAT, "info --model a file")
def _(work):
    open("afile", "w").write("x")
    cli("info", "--model", "afile")
    return False


@case(CAT, "quantize --recipe nosuch")
def _(work):
    tiny_ckpt()
    cli("quantize", "--model", "ckpt", "--recipe", "nosuch")
    return False


@case(CAT, "generate --model a NaN checkpoint (greedy)")
def _(work):
    import numpy as np
    m = tiny_model()
    m.params[NORM_A][:] = np.nan
    m.save("ckpt")
    out, _ = cli("generate", "--model", "ckpt", "--prompt", "ab", "--temperature", "0", "--max-new-tokens", "3")
    return False


# ------------------------------------------------------------------------------------------------
# writes: atomicity, crashes, permissions, full disk, worker processes
# ------------------------------------------------------------------------------------------------
CAT = "writes and processes"


@case(CAT, "checkpoint of the same step saved again: kill before each file operation", valid=True)
def _(work):
    return scenario("same-step-again", "lost")


@case(CAT, "model saved over a model folder: kill before each file operation", valid=True)
def _(work):
    return scenario("model-over-model", "lost")


@case(CAT, "training checkpoint: kill before each file operation", valid=True)
def _(work):
    return scenario("later-checkpoint", "lost")


@case(CAT, "killed saves leave no .tmp files after the next save/load", valid=True)
def _(work):
    return scenario("later-checkpoint", "tmp") and scenario("model-over-model", "tmp")


@case(CAT, "files respect the umask (022 -> 0644)", valid=True)
def _(work):
    os.umask(0o022)
    tiny_ckpt()
    modes = {f: os.stat(os.path.join("ckpt", f)).st_mode & 0o777 for f in os.listdir("ckpt")}
    if any(m != 0o644 for m in modes.values()):
        raise Outcome("silent wrong", f"modes {', '.join(f'{f} {m:o}' for f, m in modes.items())}")
    return True


@case(CAT, "disk full while saving: the error names the file")
def _(work):
    import resource

    from minimoe.errors import MinimoeError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    m = tiny_model()
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
    try:
        m.save("ckpt")
    except MinimoeError as e:
        if "model.safetensors" not in str(e):
            raise Outcome("silent wrong", f"the error names no file: {e}")
        raise
    return False


@case(CAT, "saving under a path whose parent is a file")
def _(work):
    open("afile", "w").write("x")
    tiny_model().save("afile/ckpt")
    return False


@case(CAT, "kill -9 the trainer of a --threads 2 run: its shard worker exits", valid=True)
def _(work):
    data_file()
    code = ("import sys; from minimoe.cli import main; sys.exit(main(sys.argv[1:]))")
    argv = [sys.executable, "-c", code, "train", "--data", "text.txt", "--out", "run", "--preset", "tiny-moe",
            "--max-iters", "100000", "--block-size", "8", "--batch-size", "4", "--threads", "2",
            "--eval-interval", "0", "--ckpt-interval", "0", "--sample-tokens", "0", "--quiet"]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children = []
    deadline = time.time() + 60
    while time.time() < deadline and not children:
        time.sleep(0.2)
        try:
            children = open(f"/proc/{p.pid}/task/{p.pid}/children").read().split()
        except OSError:
            break
    if not children:
        p.kill()
        raise RuntimeError("the trainer started no worker")
    time.sleep(1.0)
    p.kill()
    p.wait()
    worker = int(children[0])
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            state = open(f"/proc/{worker}/stat").read().split(")")[-1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.2)
    os.kill(worker, signal.SIGKILL)
    raise Outcome("hang", f"worker {worker} still running 10 s after its trainer was killed")


# ------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------

def child_main(index: int, result_path: str) -> None:
    c = CASES[index]
    from minimoe.errors import MinimoeError
    detail = ""
    try:
        r = c.fn(os.getcwd())
        cls = "correct result" if r else "silent wrong"
    except Outcome as e:
        cls, detail = e.cls, str(e)
    except (Clear, MinimoeError) as e:
        cls, detail = ("refused valid" if c.valid else "clear error"), str(e)
    except SystemExit as e:
        cls, detail = "raw traceback", f"SystemExit({e.code})"
    except BaseException as e:                   # noqa: BLE001 - that is what is being measured
        cls, detail = "raw traceback", f"{type(e).__name__}: {e}"
    with open(result_path, "w") as f:
        json.dump({"class": cls, "detail": detail[:300]}, f)


def run_case(index: int, root: str, timeout: float) -> dict:
    c = CASES[index]
    with tempfile.TemporaryDirectory(prefix="sweep-") as work:
        result = os.path.join(work, "result.json")
        os.mkdir(os.path.join(work, "cwd"))
        env = dict(os.environ, PYTHONPATH=root, MPLBACKEND="Agg")
        t0 = time.time()
        try:
            p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", str(index), result],
                               cwd=os.path.join(work, "cwd"), env=env, capture_output=True, timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = None
        dt = time.time() - t0
        if os.path.exists(result):
            r = json.load(open(result))
        elif rc is None:
            r = {"class": "hang", "detail": f"no answer after {timeout:.0f} s"}
        elif rc < 0:
            r = {"class": "crash", "detail": f"killed by {signal.Signals(-rc).name}"}
        else:
            r = {"class": "crash", "detail": f"exit {rc} without a result: {p.stderr[-300:].decode(errors='replace')}"}
    return {"category": c.category, "case": c.name, "valid": c.valid, **r, "seconds": round(dt, 1)}


def table(results: list[dict]) -> str:
    cats = list(dict.fromkeys(r["category"] for r in results))
    lines = ["| input category | cases | " + " | ".join(CLASSES) + " |",
             "|---|---:|" + "---:|" * len(CLASSES)]
    for cat in cats + ["all"]:
        rows = [r for r in results if cat in ("all", r["category"])]
        counts = [sum(r["class"] == k for r in rows) for k in CLASSES]
        name = f"**{cat}**" if cat == "all" else cat
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(str(n) if n else "" for n in counts) + " |")
    return "\n".join(lines)


def compare(before: list[dict], after: list[dict]) -> str:
    """One table of two runs over the same cases: each cell 'before -> after'."""
    cats = list(dict.fromkeys(r["category"] for r in after))
    lines = ["| input category | cases | " + " | ".join(CLASSES) + " |", "|---|---:|" + "---:|" * len(CLASSES)]
    for cat in cats + ["all"]:
        b = [r for r in before if cat in ("all", r["category"])]
        a = [r for r in after if cat in ("all", r["category"])]
        cells = []
        for k in CLASSES:
            nb, na = sum(r["class"] == k for r in b), sum(r["class"] == k for r in a)
            cells.append("" if nb == na == 0 else f"{nb} -> {na}")
        name = f"**{cat}**" if cat == "all" else cat
        lines.append(f"| {name} | {len(a)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="minimoe reliability sweep")
    p.add_argument("--root", default=REPO, help="the minimoe source tree to test (default: this checkout)")
    p.add_argument("--json", metavar="FILE", help="write every case's outcome here")
    p.add_argument("--only", metavar="CATS", help="comma-separated words; run categories containing one")
    p.add_argument("--timeout", type=float, default=180)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--list", action="store_true", help="list the cases")
    p.add_argument("--compare", nargs=2, metavar=("BEFORE.json", "AFTER.json"),
                   help="print one before -> after table of two --json results")
    args = p.parse_args(argv)
    if args.compare:
        runs = [json.load(open(path))["results"] for path in args.compare]
        print(compare(*runs))
        return 0
    if args.child:
        child_main(int(args.child[0]), args.child[1])
        return 0
    chosen = [i for i, c in enumerate(CASES)
              if not args.only or any(w.strip().lower() in c.category.lower() for w in args.only.split(","))]
    if args.list:
        for i in chosen:
            print(f"{CASES[i].category:24s} {CASES[i].name}")
        return 0
    results = []
    for i in chosen:
        r = run_case(i, os.path.abspath(args.root), args.timeout)
        results.append(r)
        print(f"{r['class']:15s} {r['category']:24s} {r['case']}  [{r['detail'][:110]}]", file=sys.stderr, flush=True)
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"root": os.path.abspath(args.root), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.path = [p for p in sys.path if os.path.abspath(p or ".") != HERE]   # minimoe from --root
    sys.exit(main())
