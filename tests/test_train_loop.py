"""The training loop: exact resume, atomic checkpoints, the NaN guard, metrics.json and the CLI.

Runs use the tiny presets with short blocks so the whole file takes a few seconds."""
import json
import os

import numpy as np
import pytest

import minimoe
from minimoe.cli import main as cli_main
from minimoe.train import loop
from minimoe.train.loop import TrainConfig, Trainer, TrainingDiverged

FAST = dict(preset="tiny-moe", batch_size=4, block_size=16, eval_iters=2, sample_tokens=0, warmup_iters=10)


def params_equal(a, b):
    return [n for n in a if not np.array_equal(a[n], b[n])]


def test_resume_is_bit_exact(tmp_path):
    """200 iterations straight == 100, a resume from the checkpoint, then 100 more."""
    straight = Trainer.new(TrainConfig(max_iters=200, out=str(tmp_path / "a"), eval_interval=50,
                                       ckpt_interval=0, **FAST), verbose=False)
    straight.run()
    half = Trainer.new(TrainConfig(max_iters=100, lr_decay_iters=200, out=str(tmp_path / "b"),
                                   eval_interval=30, ckpt_interval=0, **FAST), verbose=False)
    half.run()
    resumed = Trainer.resume(str(tmp_path / "b"), verbose=False, max_iters=200)
    assert resumed.step == 100
    resumed.run()
    assert params_equal(straight.model.params, resumed.model.params) == []
    assert params_equal(straight.opt.m, resumed.opt.m) == [] and params_equal(straight.opt.v, resumed.opt.v) == []
    # and what is on disk is what is in memory
    saved = minimoe.load(str(tmp_path / "b"))
    assert params_equal(saved.params, straight.model.params) == []
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m["iters"] == 200 and len(m["train_curve"]) == 200


def test_checkpoint_survives_a_crash_mid_save(tmp_path, monkeypatch):
    out = tmp_path / "run"
    t = Trainer.new(TrainConfig(max_iters=10, out=str(out), eval_interval=0, ckpt_interval=5, **FAST),
                    verbose=False)
    t.run(until=5)                                       # the end of run() saves step 5
    good = {k: v.copy() for k, v in t.model.params.items()}
    assert loop.latest_checkpoint(str(out)).endswith("step-000005")

    def crash(path, tensors, metadata=None):             # the optimizer file is half written
        with open(path, "wb") as f:
            f.write(b"\x00" * 100)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(loop, "write_safetensors", crash)
    with pytest.raises(OSError, match=r"optimizer.safetensors: cannot write \(disk full \(simulated\)\)"):
        t.run(until=10)
    monkeypatch.undo()
    # LATEST still names step 5, which is complete and loads; no half-written step-10 folder
    assert loop.latest_checkpoint(str(out)).endswith("step-000005")
    assert not (out / "checkpoint" / "step-000010").exists()
    resumed = Trainer.resume(str(out), verbose=False)
    assert resumed.step == 5 and params_equal(resumed.model.params, good) == []
    resumed.run()                                        # and training goes on from there
    assert resumed.step == 10
    assert sorted(os.listdir(out / "checkpoint")) == ["LATEST", "step-000010"]   # temps cleaned


def test_nan_guard_names_step_and_layer(tmp_path):
    out = tmp_path / "run"
    t = Trainer.new(TrainConfig(max_iters=20, out=str(out), eval_interval=0, ckpt_interval=3, **FAST),
                    verbose=False)
    t.run(until=6)
    before = {k: v.copy() for k, v in t.model.params.items()}
    t.model.params["layers.1.attn.v.weight"][0, 0] = np.nan   # in place: the model sees it
    with pytest.raises(TrainingDiverged, match=r"step 6: the loss is nan; first non-finite value: "
                                               r"parameter layers.1.attn.v.weight, in layer 1") as info:
        t.run(until=20)
    assert info.value.step == 6 and "layer 1" in info.value.where
    assert "last good checkpoint is" in str(info.value)
    assert t.step == 6                                   # no update was applied
    assert loop.latest_checkpoint(str(out)).endswith("step-000006")
    saved = minimoe.load(loop.latest_checkpoint(str(out)))
    assert params_equal(saved.params, before) == []      # the checkpoint is the last good state
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"].startswith("diverged: step 6")


@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")
def test_nan_guard_on_activations_and_gradients(tmp_path):
    t = Trainer.new(TrainConfig(max_iters=5, out=str(tmp_path), eval_interval=0, ckpt_interval=0, **FAST),
                    verbose=False)
    # huge value and output projections overflow layer 0's attention output to inf (the weights
    # stay finite)
    t.model.params["layers.0.attn.v.weight"][:] = 1.0
    t.model.params["layers.0.attn.o.weight"][:] = 3e38
    with pytest.raises(TrainingDiverged, match=r"layer 0 \(the attention output, layers.0.attn\)"):
        t.train_step()
    t = Trainer.new(TrainConfig(max_iters=5, out=str(tmp_path), eval_interval=0, ckpt_interval=0, **FAST),
                    verbose=False)
    backward = t.model.backward

    def bad_backward(*args, **kwargs):
        grads = backward(*args, **kwargs)
        grads["layers.1.moe.experts.up"][...] = np.inf
        return grads

    t.model.backward = bad_backward
    with pytest.raises(TrainingDiverged, match=r"step 0: the gradient norm is inf; first non-finite value: "
                                               r"the gradient of layers.1.moe.experts.up \(layer 1"):
        t.train_step()


def test_metrics_json(tmp_path):
    t = Trainer.new(TrainConfig(max_iters=8, out=str(tmp_path), eval_interval=4, ckpt_interval=0,
                                **{**FAST, "sample_tokens": 20}), verbose=False)
    t.run()
    m = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("val_loss", "train_loss", "iters", "tokens_per_s", "wall_s", "expert_load", "ms_per_iter",
                "aux_loss", "z_loss", "history", "sample"):
        assert m[key] is not None, key
    assert m["iters"] == 8 and m["status"] == "finished"
    assert [h["iter"] for h in m["history"]] == [0, 4, 8]
    cfg = t.model.config
    assert len(m["expert_load"]) == cfg.n_layers
    for load in m["expert_load"]:
        assert len(load) == cfg.n_experts and sum(load) == pytest.approx(1.0, abs=1e-4)
    assert m["tokens_per_s"] == pytest.approx(8 * 4 * 16 / m["train_s"], rel=1e-3)


def test_dense_preset_has_no_router_losses(tmp_path):
    t = Trainer.new(TrainConfig(max_iters=3, out=str(tmp_path), eval_interval=0, ckpt_interval=0,
                                **{**FAST, "preset": "tiny"}), verbose=False)
    m = t.run()
    assert m["expert_load"] == [None, None] and m["aux_loss"] == 0.0


def test_grad_accum_and_shards_equal_one_big_batch(tmp_path):
    """Two micro-batches of 4, or one batch of 8 in 1, 2 or 3 thread shards, give the gradient of
    one batch of 8 (up to float32 summation order). The router losses make this a real test:
    the load-balancing loss is not a sum over tokens, so shards must share their routing."""
    kw = dict(FAST, max_iters=1, eval_interval=0, ckpt_interval=0, aux_loss_coef=0.5, z_loss_coef=0.1)
    rng = np.random.default_rng(5)
    captured = {}

    def gradient(name, **settings):
        t = Trainer.new(TrainConfig(out=str(tmp_path / name), **{**kw, **settings}), verbose=False)
        if "x8" not in captured:
            captured["x8"], captured["y8"] = t.data.batch("train", 8, 16, rng)
        x8, y8 = captured["x8"], captured["y8"]
        if settings.get("grad_accum", 1) == 2:
            halves = iter([(x8[:4], y8[:4]), (x8[4:], y8[4:])])
            t.data.batch = lambda *a: next(halves)
        else:
            t.data.batch = lambda *a: (x8, y8)
        t.opt.step = lambda grads, lr: captured.__setitem__(name, {k: v.copy() for k, v in grads.items()})
        info = t.train_step()
        return captured[name], info

    one, info1 = gradient("one", batch_size=8, threads=1)
    for name, settings in (("two-shards", dict(batch_size=8, threads=2)),
                           ("three-shards", dict(batch_size=8, threads=3))):
        other, info = gradient(name, **settings)
        assert info["ce"] == pytest.approx(info1["ce"], rel=1e-6)
        assert info["aux"] == pytest.approx(info1["aux"], rel=1e-6)
        for k in one:
            np.testing.assert_allclose(other[k], one[k], rtol=1e-4, atol=1e-7, err_msg=f"{name}: {k}")
    # micro-batches: cross-entropy and z-loss add up exactly; the load-balancing loss is computed
    # per micro-batch (as in any gradient accumulation), so only compare without it
    kw.update(aux_loss_coef=0.0)
    captured.clear()
    one, _ = gradient("one-noaux", batch_size=8, threads=1)
    accum, _ = gradient("accum", batch_size=4, grad_accum=2, threads=1)
    for k in one:
        np.testing.assert_allclose(accum[k], one[k], rtol=1e-4, atol=1e-7, err_msg=k)


def test_cli_train_resume_and_generate(tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["train", "--preset", "tiny-moe", "--max-iters", "6", "--batch-size", "4", "--block-size", "16",
            "--eval-interval", "3", "--eval-iters", "2", "--sample-tokens", "20", "--out", out, "--quiet"]
    assert cli_main(args) == 0
    assert json.loads(open(os.path.join(out, "metrics.json")).read())["iters"] == 6
    assert cli_main(["train", "--resume", out, "--max-iters", "9", "--quiet"]) == 0
    assert json.loads(open(os.path.join(out, "metrics.json")).read())["iters"] == 9
    assert cli_main(["generate", "--model", out, "--prompt", "def", "--max-new-tokens", "5"]) == 0
    capsys.readouterr()
    assert cli_main(["train", "--resume", out, "--preset", "tiny"]) == 1
    assert "the run was trained with --preset 'tiny-moe'; --preset 'tiny' would change its model" \
        in capsys.readouterr().err
    assert cli_main(args[:-3] + ["--resume", out, "--max-iters", "10", "--quiet"]) == 0   # the same command again
    assert json.loads(open(os.path.join(out, "metrics.json")).read())["iters"] == 10
    assert cli_main(["train", "--resume", str(tmp_path / "nothing")]) == 1
    assert "no training checkpoint to resume" in capsys.readouterr().err


def test_cli_train_prints_progress_sample_and_expert_usage(tmp_path, capsys):
    args = ["train", "--preset", "tiny-moe", "--max-iters", "4", "--batch-size", "2", "--block-size", "8",
            "--eval-iters", "1", "--sample-tokens", "10", "--out", str(tmp_path), "--set", "n_experts=3",
            "--set", "top_k=1"]
    assert cli_main(args) == 0
    captured = capsys.readouterr()
    assert "train 4/4" in captured.err                   # the progress bar
    assert "tok/s" in captured.err
    assert "sample:" in captured.out
    assert "expert usage (share of the top-1 assignments on val" in captured.out
    assert json.loads((tmp_path / "config.json").read_text())["n_experts"] == 3


def test_cli_data_error(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert cli_main(["train", "--data", str(empty), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    assert f"minimoe train: error: {empty}: the file is empty" in capsys.readouterr().err


def test_train_on_shakespeare(tmp_path, shakespeare_path):
    t = Trainer.new(TrainConfig(data=str(shakespeare_path), max_iters=2, out=str(tmp_path), eval_interval=0,
                                ckpt_interval=0, **FAST), verbose=False)
    assert t.model.config.vocab_size == 65
    t.run()


def test_shard_helpers():
    from minimoe.train.parallel import blas_threads, openblas_threads, shard_rows, split_router_grads
    assert shard_rows(12, 2) == [slice(0, 6), slice(6, 12)]
    assert [s.stop - s.start for s in shard_rows(8, 3)] == [3, 2, 3]
    assert shard_rows(1, 4) == [slice(0, 1)]                   # never an empty shard
    g = {2: np.arange(20.0).reshape(10, 2)}
    parts = split_router_grads(g, [4, 6])
    np.testing.assert_array_equal(np.concatenate([parts[0][2], parts[1][2]]), g[2])
    fns = openblas_threads()
    if fns is not None:                                        # NumPy's own OpenBLAS: (get, set)
        before = fns[0]()
        with blas_threads(1):
            assert fns[0]() == 1
        assert fns[0]() == before


@pytest.mark.parametrize("preset", ["tiny-gpt-oss", "tiny-deepseek"])
def test_cli_trains_the_real_architecture_presets(tmp_path, preset):
    """gpt-oss's and DeepSeek's layers train end to end (`minimoe train`), save, load and generate."""
    out = str(tmp_path / preset)
    args = ["train", "--preset", preset, "--max-iters", "12", "--batch-size", "4", "--block-size", "32",
            "--lr", "3e-3", "--warmup-iters", "2", "--eval-interval", "0", "--eval-iters", "1", "--sample-tokens", "5", "--out", out,
            "--quiet"]
    assert cli_main(args) == 0
    history = json.loads(open(os.path.join(out, "metrics.json")).read())
    losses = [row[1] for row in history["train_curve"]]    # [iter, loss, aux, z]
    assert losses[-1] < losses[0] - 0.3, losses
    model = minimoe.load(out)
    assert model.config.name == preset
    assert model.generate(np.array([1, 2, 3]), 4).shape == (7,)
