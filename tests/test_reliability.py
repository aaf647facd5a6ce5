"""The guarantees of docs/reliability.md, one small test each: atomic multi-file saves and their
recovery, permissions, full disks, confined file names, non-finite weights, checked arguments and
flags, and shard workers that outlive no trainer. (The broad sweeps are tests/test_fuzz.py,
tests/test_crash_writes.py and tests/reliability/sweep.py.)"""
import errno
import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

import minimoe
from minimoe import CheckpointError, Config, MinimoeError, Model
from minimoe.cli import main as cli_main
from minimoe.errors import WriteError
from minimoe.io import atomic, checkpoint
from minimoe.tokenizer import CharTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHARS = "\n abcdefghijklmn"


def tiny(seed=0, d_model=32, **kw):
    cfg = Config(vocab_size=16, d_model=d_model, n_layers=1, n_heads=2, d_ff=32, n_experts=2, top_k=1,
                 max_seq_len=16, **kw)
    return Model(cfg, seed=seed, tokenizer=CharTokenizer(CHARS))


def same_params(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# --- atomic saves ---------------------------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_files_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        tiny().save(tmp_path / "ckpt")
        atomic.atomic_write_text(tmp_path / "one.txt", "x")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [*(tmp_path / "ckpt").iterdir(), tmp_path / "one.txt"]}
    assert set(modes.values()) == {mode}, modes


def test_a_full_disk_names_the_file_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    old = tiny(seed=1)
    old.save(folder)

    def full(path, tensors, metadata=None, codes=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_safetensors", full)
    with pytest.raises(WriteError, match=r"ckpt/model.safetensors: cannot write \(No space left on device\)"):
        tiny(seed=2).save(folder)
    monkeypatch.undo()
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert same_params(minimoe.load(folder).params, old.params)


def test_a_real_file_size_limit_is_a_clear_error(tmp_path):
    """RLIMIT_FSIZE makes write() fail with EFBIG as a full disk fails with ENOSPC (no root needed)."""
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "sys.path.insert(0, sys.argv[2]); import test_reliability as t\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))\n"
            "t.tiny().save(sys.argv[1])")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ckpt"), os.path.join(ROOT, "tests")],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert "WriteError: " in r.stderr and "ckpt/model.safetensors: cannot write (File too large)" in r.stderr
    assert os.listdir(tmp_path / "ckpt") == []                # nothing half-written left behind


def test_a_committed_save_is_finished_by_the_next_load(tmp_path):
    """The state a kill leaves after the journal is written: new files still under temporary names,
    some already renamed. load() replays the journal: the folder becomes the new model, whole."""
    folder = tmp_path / "ckpt"
    old, new = tiny(seed=1), tiny(seed=2, norm_eps=1e-6)
    old.save(folder)
    new.save(tmp_path / "staging")
    plan = {"replace": [], "remove": []}
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        tmp = f".{name}.999999.0123abcd.tmp"                 # a pid that is not running
        os.replace(tmp_path / "staging" / name, folder / tmp)
        plan["replace"].append([tmp, name])
    os.replace(folder / plan["replace"][0][0], folder / "model.safetensors")   # one rename done
    (folder / atomic.JOURNAL).write_text(json.dumps(plan))
    m = minimoe.load(folder)
    assert m.config == new.config and same_params(m.params, new.params)
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors", "tokenizer.json"]


def test_an_uncommitted_save_leaves_the_old_model_and_its_temporaries_go(tmp_path):
    folder = tmp_path / "ckpt"
    old = tiny(seed=1)
    old.save(folder)
    (folder / ".model.safetensors.999999.0123abcd.tmp").write_bytes(b"half")   # a killed save's
    (folder / f".config.json.{os.getpid()}.0123abcd.tmp").write_text("{")      # a live process's
    m = minimoe.load(folder)
    assert same_params(m.params, old.params)
    assert sorted(os.listdir(folder)) == [f".config.json.{os.getpid()}.0123abcd.tmp", "config.json",
                                          "model.safetensors", "tokenizer.json"]


def test_a_journal_cannot_rename_files_outside_the_folder(tmp_path):
    folder = tmp_path / "ckpt"
    tiny().save(folder)
    (tmp_path / "victim").write_text("keep me")
    (folder / atomic.JOURNAL).write_text(json.dumps({"replace": [[".x.1.0123abcd.tmp", "../victim"]], "remove": []}))
    with pytest.raises(WriteError, match="not a journal minimoe wrote"):
        minimoe.load(folder)
    assert (tmp_path / "victim").read_text() == "keep me"


def test_the_same_step_saved_again_gets_a_new_folder(tmp_path):
    from minimoe.train.loop import TrainConfig, Trainer, latest_checkpoint
    (tmp_path / "text.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 200)
    tc = TrainConfig(preset="tiny-moe", data=str(tmp_path / "text.txt"), out=str(tmp_path / "run"), max_iters=2,
                     batch_size=2, block_size=8, eval_interval=0, eval_iters=1, sample_tokens=0, threads=1)
    Trainer.new(tc, verbose=False).run()
    first = latest_checkpoint(tc.out)
    t = Trainer.resume(tc.out, verbose=False)
    t.run()                                                     # step 2 again
    second = latest_checkpoint(tc.out)
    assert first.endswith("step-000002") and second.endswith("step-000002-2")
    assert sorted(os.listdir(tmp_path / "run" / "checkpoint")) == ["LATEST", "step-000002-2"]
    assert same_params(minimoe.load(second).params, minimoe.load(first.replace("step-000002", "step-000002-2")).params)


@pytest.mark.parametrize("latest", ["../../elsewhere/step-000002", "/etc", "..", "", "step\0"])
def test_latest_must_name_a_folder_beside_it(tmp_path, latest):
    from minimoe.train.loop import latest_checkpoint
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "LATEST").write_text(latest)
    with pytest.raises(CheckpointError, match="must hold the name of a checkpoint folder beside it"):
        latest_checkpoint(str(tmp_path))


# --- reading: safetensors, HF folders, configs, tokenizers -------------------------------------------

def _st(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.mark.parametrize("offsets, words", [
    ([[0, 8], [4, 12]], "overlap"),                       # b reads the second half of a's bytes
    ([[0, 8], [0, 8]], "overlap"),
    ([[0, 8], [12, 20]], r"bytes \[8, 12\) of the data belong to no tensor"),
    ([[0, 8], [8, 16]], None),                            # valid
])
def test_tensors_must_tile_the_data(tmp_path, offsets, words):
    from minimoe.io.safetensors_file import read_tensors
    end = max(e for _, e in offsets)
    header = {n: {"dtype": "F32", "shape": [2], "data_offsets": o} for n, o in zip("ab", offsets)}
    path = tmp_path / "x.safetensors"
    path.write_bytes(_st(header, np.arange(end // 4, dtype=np.float32).tobytes()))
    if words is None:
        assert read_tensors(path)[0]["b"].tolist() == [2.0, 3.0]
    else:
        with pytest.raises(CheckpointError, match=words):
            read_tensors(path)


def test_trailing_bytes_after_the_last_tensor_are_refused(tmp_path):
    from minimoe.io.safetensors_file import read_tensors
    path = tmp_path / "x.safetensors"
    path.write_bytes(_st({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, b"abcd"))
    with pytest.raises(CheckpointError, match="2 bytes after the last tensor's data"):
        read_tensors(path)


@pytest.mark.parametrize("shard", ["../elsewhere/model.safetensors", "/etc/passwd", "a/../../b", "C:/x"])
def test_a_shard_index_names_only_files_inside_the_folder(tmp_path, shard):
    import shutil
    folder = tmp_path / "hf"
    shutil.copytree(os.path.join(ROOT, "tests", "fixtures", "hf_mixtral_gqa"), folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = shard
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="is not a file name inside the model folder") as e:
        minimoe.load(folder)
    head = open("/etc/passwd", "rb").read(8)
    assert str(struct.unpack("<Q", head)[0]) not in str(e.value)   # no byte of it is quoted


def test_an_error_never_quotes_the_header_length_bytes(tmp_path):
    """The first 8 bytes of a file that is not safetensors are not echoed as a 'header length'."""
    from minimoe.io.safetensors_file import read_header
    path = tmp_path / "secret.safetensors"
    path.write_bytes(b"password=hunter2\n")
    with pytest.raises(CheckpointError) as e:
        read_header(path)
    assert str(struct.unpack("<Q", b"password")[0]) not in str(e.value) and "password" not in str(e.value)


@pytest.mark.parametrize("fmt", ["q4_0", "q8_0", "q4_1", "nf4", "mxfp4"])
def test_non_finite_weights_are_refused_at_load_unless_asked(tmp_path, fmt):
    from minimoe.quant.qtensor import quantize
    m = tiny(d_model=64)                                             # nf4 blocks are 64 wide
    qt = m.params["layers.0.attn.q.weight"] = quantize(m.params["layers.0.attn.q.weight"], fmt)
    block = qt.blocks.reshape(-1, qt.format.BLOCK_BYTES)
    block[5, :4] = 255 if fmt == "mxfp4" else [0x00, 0x7C, 0x00, 0x7C]   # scale: 2^128, or fp16/f32 inf
    if fmt == "mxfp4":
        block[5, 1:] = 0x77                                           # codes of 6: 6 * 2^128 overflows
    if fmt == "nf4":
        block[5, :4] = np.frombuffer(np.float32(np.inf).tobytes(), np.uint8)
    m.save(tmp_path / "q")
    with pytest.raises(CheckpointError, match=r"tensor 'layers.0.attn.q.weight' holds a non-finite value"):
        minimoe.load(tmp_path / "q")
    minimoe.load(tmp_path / "q", check_finite=False)                 # the caller's choice
    with np.errstate(all="ignore"):
        flat = qt.dequantize().reshape(-1)
    assert checkpoint.first_nonfinite(qt) == int(np.argmax(~np.isfinite(flat)))


def test_skip_finite_check_flag(tmp_path, capsys):
    m = tiny()
    m.params["norm.weight"][3] = np.inf
    m.save(tmp_path / "ckpt")
    assert cli_main(["info", "--model", str(tmp_path / "ckpt")]) == 1
    assert "tensor 'norm.weight' holds a non-finite value (NaN or inf) at index (3,)" in capsys.readouterr().err
    assert cli_main(["info", "--model", str(tmp_path / "ckpt"), "--skip-finite-check"]) == 0


@pytest.mark.parametrize("chars, vocab, words", [
    (CHARS + "xyz", 16, "encodes text as ids 0..18 but the model's vocabulary has 16"),
    (CHARS[:4], 16, "ids 4..15 could not be decoded"),
])
def test_the_tokenizer_must_fit_the_vocabulary(tmp_path, chars, vocab, words):
    tiny().save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "tokenizer.json").write_text(json.dumps({"kind": "char", "chars": chars}))
    with pytest.raises(CheckpointError, match=words):
        minimoe.load(tmp_path / "ckpt")


def test_a_byte_tokenizer_needs_the_256_bytes_but_not_its_special_tokens(tmp_path):
    from minimoe.tokenizer import ByteTokenizer
    for vocab, ok in ((256, True), (255, False)):
        m = Model(Config.preset("tiny", vocab_size=vocab), tokenizer=ByteTokenizer())   # 257 tokens
        m.save(tmp_path / str(vocab))
        if ok:
            assert minimoe.load(tmp_path / str(vocab)).tokenizer.vocab_size == 257
        else:
            with pytest.raises(CheckpointError, match="encodes text as ids 0..255 but the model's vocabulary has 255"):
                minimoe.load(tmp_path / str(vocab))


def test_config_types_are_checked_before_conversion():
    with pytest.raises(minimoe.ConfigError, match=r"dense_layers must be a list of layer indices \(integers\), found 1"):
        Config(n_experts=2, top_k=1, dense_layers=1)
    with pytest.raises(minimoe.ConfigError, match=r"max_seq_len=1125899906842624 is beyond minimoe's bound"):
        Config(max_seq_len=2**50)
    with pytest.raises(minimoe.ConfigError, match=r"unknown config field\(s\) \['n_expert'\]; did you mean 'n_experts'"):
        Config().replace(n_expert=2)
    with pytest.raises(minimoe.ConfigError, match="tie_embeddings must be true or false, found 'false'"):
        Config(tie_embeddings="false")


def test_char_data_encodes_with_any_order_of_characters():
    from minimoe.train.data import encode
    tok = CharTokenizer("zyx ab\n")
    text = "ab zx\nyy" * 3
    assert encode(tok, text).tolist() == tok.encode(text).tolist()


# --- arguments and flags ---------------------------------------------------------------------------

@pytest.mark.parametrize("kw, words", [
    (dict(top_p=0.0, temperature=1.0), r"top_p must be a finite number in \(0, 1\]"),
    (dict(top_p=float("nan"), temperature=1.0), "top_p must be"),
    (dict(top_k=0, temperature=1.0), "top_k must be an integer >= 1"),
    (dict(top_k=2.5, temperature=1.0), "top_k must be an integer >= 1"),
    (dict(temperature=float("nan")), "temperature must be a finite number >= 0"),
    (dict(temperature=-1.0), "temperature must be a finite number >= 0"),
    (dict(seed=-1), "seed must be an integer >= 0"),
])
def test_generate_checks_its_arguments(kw, words):
    with pytest.raises(MinimoeError, match=words):
        tiny().generate(np.array([1, 2]), 3, **kw)


def test_a_tiny_temperature_is_greedy_and_nan_logits_are_refused():
    from minimoe.model import sample
    logits = np.array([[0.0, 3.0, 1.0]], np.float32)
    assert sample(logits, 1e-320, None, None, np.random.default_rng(0)).tolist() == [1]
    with pytest.raises(MinimoeError, match="logits hold NaN or inf"):
        sample(np.array([[0.0, np.nan]]), 0.0, None, None, np.random.default_rng(0))


def test_eval_checks_its_sizes_and_batch_size_does_not_change_the_loss():
    from minimoe.evaluate import evaluate
    m = tiny()
    tokens = np.arange(100) % 16
    for bad in (dict(batch_size=-1), dict(batch_size=0), dict(max_tokens=-5), dict(block_size=0),
                dict(block_size=17)):
        with pytest.raises(MinimoeError):
            evaluate(m, tokens, **bad)
    losses = {b: evaluate(m, tokens, batch_size=b)["loss"] for b in (1, 3, 8)}
    assert max(losses.values()) - min(losses.values()) < 1e-6 * losses[1]     # float32 rounding only


@pytest.mark.parametrize("argv, words", [
    (["train", "--set", "nosuch=1"], "'nosuch' is not a model Config field"),
    (["train", "--set", "n_expert=2"], "did you mean 'n_experts'"),
    (["generate", "--preset", "tiny", "--prompt-ids", "99999999999999999999"], "outside the model's vocabulary"),
    (["generate", "--preset", "tiny", "--top-p", "0"], r"argument --top-p: expected a finite number in \(0, 1\]"),
    (["eval", "--preset", "tiny", "--data", "x", "--batch-size", "0"], "argument --batch-size: expected an integer >= 1"),
    (["estimate", "tiny", "--context", "-1"], "argument --context: expected an integer >= 1"),
])
def test_bad_flags_are_one_clear_line(argv, words, capsys):
    try:
        rc = cli_main(argv)
    except SystemExit as e:                                # argparse's usage errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc in (1, 2) and "Traceback" not in err
    assert any(line.startswith(f"minimoe {argv[0]}: error: ") and __import__("re").search(words, line)
               for line in err.splitlines()), err


def test_matmul_refuses_a_packed_weight_with_strided_arrays():
    from minimoe.kernels import KernelInputError, pack
    from minimoe.quant.qtensor import quantize
    import dataclasses
    pw = pack(quantize(np.ones((64, 64), np.float32), "q4_0"))
    bad = dataclasses.replace(pw, d=np.lib.stride_tricks.as_strided(pw.d, pw.d.shape, (0, 2**36, 4)))
    with pytest.raises(KernelInputError, match="must be C-contiguous"):
        minimoe.matmul(np.ones((1, 64), np.float32), bad)       # it used to segfault


# --- processes ---------------------------------------------------------------------------------------

def test_shard_workers_exit_when_their_trainer_is_killed(tmp_path):
    (tmp_path / "text.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 300)
    code = "import sys; from minimoe.cli import main; sys.exit(main(sys.argv[1:]))"
    p = subprocess.Popen([sys.executable, "-c", code, "train", "--data", "text.txt", "--out", "run", "--preset",
                          "tiny-moe", "--max-iters", "100000", "--block-size", "8", "--batch-size", "4",
                          "--threads", "2", "--eval-interval", "0", "--ckpt-interval", "0", "--sample-tokens",
                          "0", "--quiet"], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=ROOT),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children, deadline = [], time.time() + 60
    while not children and time.time() < deadline:
        time.sleep(0.2)
        children = open(f"/proc/{p.pid}/task/{p.pid}/children").read().split()
    assert children, "the trainer forked no shard worker"
    time.sleep(0.5)
    p.send_signal(signal.SIGKILL)
    p.wait()
    worker, deadline = int(children[0]), time.time() + 10
    while time.time() < deadline:
        try:
            state = open(f"/proc/{worker}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return                                              # gone
        if state == "Z":
            return                                              # exited, not yet reaped
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    pytest.fail("the shard worker outlived its trainer by 10 s")
