"""The training loop: batches in, AdamW steps out, with evaluation, checkpoints and a NaN guard.

Shape legend: B batch, T block length, V vocab, N = B*T tokens, E experts.

One iteration (`Trainer.train_step`), for each of `grad_accum` micro-batches:

    x, y = data.batch("train", B, T, rng)                (B, T) ids and next-token targets
    logits, cache = model.forward(x)                     (B, T, V)
    loss = CE(logits, y) + aux_coef * aux + z_coef * z   minimoe/nn/loss.py, minimoe/train/losses.py
    grads += model.backward(dCE, cache, router_grads)    every parameter, by name

then clip the summed gradient to a global norm, and take one AdamW step at the scheduled rate.
With loss-free balancing (bias_update_rate > 0) each MoE layer's correction bias then moves by
the sign of its load error (minimoe/train/balance.py). The forward passes route in training mode
(Model.forward(train=True)): the training capacity factor, and noisy top-k's noise drawn for the
whole micro-batch from default_rng([seed, 3, micro-batch number]) and split by rows like the batch.
With `threads` > 1 each micro-batch is split by rows into shards that run in their own processes
(minimoe/train/parallel.py); the step computes the same thing, up to float rounding order.

A run folder (`--out DIR`) holds:

    DIR/config.json, model.safetensors, tokenizer.json   the latest model: `minimoe generate --model DIR`
    DIR/metrics.json                                     losses, speed, expert load, history
    DIR/checkpoint/LATEST                                one line: the name of the newest checkpoint
    DIR/checkpoint/step-000500/                          a complete, resumable checkpoint:
        config.json, tokenizer.json, model.safetensors       the model (minimoe.load reads it)
        optimizer.safetensors                                AdamW's m and v, "m.<param>", "v.<param>"
        train_state.json                                     step, RNG state, settings, history

A checkpoint is written in full into a temporary folder, renamed to step-NNNNNN (step-NNNNNN-2
when that step was saved before: nothing is ever renamed over a checkpoint), and only then named
in LATEST (an atomic rename of a one-line file); older checkpoints are deleted after that.
A crash at any moment therefore leaves LATEST naming a complete checkpoint. `--resume DIR` reads
it and continues bit for bit: the same parameters, optimizer moments, learning rate and random
batches as if the run had never stopped.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field

import numpy as np

from minimoe.checks import check_int, check_number
from minimoe.config import Config
from minimoe.errors import CheckpointError, DataError, MinimoeError
from minimoe.io.atomic import (atomic_path, atomic_write_text, is_stale_temp, remove_stale_temps, temp_name,
                               writing)
from minimoe.io.json_file import read_json
from minimoe.io.safetensors_file import write_safetensors
from minimoe.model import Model
from minimoe.nn import moe
from minimoe.train import balance, losses
from minimoe.train.data import Dataset, build_dataset
from minimoe.train.optim import AdamW, clip_by_global_norm, lr_at
from minimoe.train.parallel import (Shards, blas_threads, forward_shard, merge_routing,
                                    split_router_grads)
from minimoe.train.progress import Progress, format_duration

CHECKPOINT_DIR = "checkpoint"
STATE_FORMAT = "minimoe-train-state"


class TrainingDiverged(MinimoeError):
    """A loss or gradient became NaN or infinite. `step` and `where` say when and in which layer."""

    def __init__(self, message: str, step: int, where: str):
        super().__init__(message)
        self.step, self.where = step, where


@dataclass
class TrainConfig:
    """Everything that defines a training run (besides the model Config, which `preset` and
    `model` give). Defaults follow nanoGPT's CPU recipe for character-level Shakespeare."""
    preset: str = "shakespeare-moe"
    model: dict = field(default_factory=dict)   # Config fields to override on top of the preset
    data: str = "pydoc"               # "pydoc", "shakespeare" or a text file (minimoe/train/data.py)
    tokenizer: str = "char"           # "char" or "byte"
    out: str = ""                     # run folder; "" -> runs/<preset>
    max_iters: int = 2000
    batch_size: int = 12              # B
    block_size: int = 0               # T; 0 -> the preset's max_seq_len
    grad_accum: int = 1               # micro-batches per step
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 0           # 0 -> max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    grad_clip: float = 1.0            # 0 turns clipping off
    decay_embeddings: bool = False
    decay_norms: bool = False
    aux_loss_coef: float = 0.01       # load balancing (0 turns it off)
    aux_loss_form: str = "layers"     # "layers", "hf" or "sequence", see minimoe/train/losses.py
    z_loss_coef: float = 0.001        # router z-loss (0 turns it off)
    bias_update_rate: float = 0.0     # gamma of loss-free balancing (minimoe/train/balance.py); > 0
                                      # gives the model its correction bias; 0 turns it off
    init: str = ""                    # start from this model folder's weights (e.g. `minimoe
                                      # upcycle`'s output) instead of the preset's random ones
    eval_interval: int = 250
    eval_iters: int = 20              # batches per split per evaluation
    ckpt_interval: int = 500          # also at the end; 0: only at the end
    val_fraction: float = 0.1
    seed: int = 1337
    threads: int = 0                  # data-parallel shards of each batch, one core each; 0 -> auto
    sample_tokens: int = 300
    sample_temperature: float = 0.8

    def resolved(self) -> "TrainConfig":
        """A copy with the "0 -> default" fields filled in (done once, when a run starts, so a
        resumed run keeps the original schedule)."""
        tc = dataclasses.replace(self, model=dict(self.model))
        if not tc.out:
            tc.out = os.path.join("runs", tc.preset)
        if not tc.lr_decay_iters:
            tc.lr_decay_iters = tc.max_iters
        if not tc.threads:
            tc.threads = default_threads()
        return tc

    def validate(self) -> None:
        """Check every setting's type and range (a MinimoeError naming it), before any work."""
        for name in ("max_iters", "batch_size", "grad_accum", "eval_iters"):
            check_int(name, getattr(self, name), lo=1)
        for name in ("block_size", "warmup_iters", "lr_decay_iters", "eval_interval", "ckpt_interval",
                     "sample_tokens", "threads", "seed"):
            check_int(name, getattr(self, name), lo=0)
        for name in ("lr", "min_lr", "weight_decay", "grad_clip", "aux_loss_coef", "z_loss_coef",
                     "sample_temperature", "bias_update_rate"):
            check_number(name, getattr(self, name), lo=0)
        check_number("eps", self.eps, lo=0, lo_open=True)
        if not 0 < check_number("val_fraction", self.val_fraction) < 1:
            raise MinimoeError(f"val_fraction must be between 0 and 1 (exclusive), found {self.val_fraction}")
        for name in ("beta1", "beta2"):
            if not 0 <= check_number(name, getattr(self, name), lo=0) < 1:
                raise MinimoeError(f"{name} must be in [0, 1), found {getattr(self, name)}")
        for name in ("preset", "data", "tokenizer", "out", "aux_loss_form", "init"):
            if not isinstance(getattr(self, name), str):
                raise MinimoeError(f"{name} must be a string, found {getattr(self, name)!r}")
        if not isinstance(self.model, dict):
            raise MinimoeError(f"model (the Config overrides) must be a dict, found {self.model!r}")
        for name in ("decay_embeddings", "decay_norms"):
            if not isinstance(getattr(self, name), bool):
                raise MinimoeError(f"{name} must be true or false, found {getattr(self, name)!r}")
        if self.aux_loss_form not in losses.FORMS:
            raise MinimoeError(f"aux_loss_form must be one of {list(losses.FORMS)}, found {self.aux_loss_form!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "train config") -> "TrainConfig":
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: train_config must be a JSON object, found {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CheckpointError(f"{source}: unknown training setting(s) {unknown}")
        return cls(**d)


def model_config(tc: TrainConfig, dataset: Dataset) -> Config:
    """The preset, with the vocabulary of the data, the block length, and `tc.model` overrides
    (and the correction bias that loss-free balancing moves, when bias_update_rate > 0)."""
    base = Config.preset(tc.preset)
    changes = {"vocab_size": dataset.vocab_size, **tc.model}
    if tc.bias_update_rate:
        changes.setdefault("router_correction_bias", True)
    if tc.block_size > base.max_seq_len:
        changes["max_seq_len"] = tc.block_size
    return base.replace(**changes)


# --- the trainer --------------------------------------------------------------------------------------
class Trainer:
    """A model, its optimiser, its data and its place in training.

        trainer = Trainer.new(TrainConfig(preset="tiny-moe", max_iters=100, out="runs/tiny"))
        metrics = trainer.run()                       # trains to max_iters, evaluates, saves
        trainer = Trainer.resume("runs/tiny", max_iters=200)
        trainer.run()
    """

    def __init__(self, tc: TrainConfig, model: Model, dataset: Dataset, opt: AdamW, step: int = 0,
                 rng: np.random.Generator | None = None, history: list | None = None,
                 totals: dict | None = None, verbose: bool = True):
        self.tc, self.model, self.data, self.opt = tc, model, dataset, opt
        if tc.bias_update_rate and not model.config.router_correction_bias:
            raise MinimoeError(f"bias_update_rate={tc.bias_update_rate} moves the routers' correction bias, "
                               f"but this model has none (router_correction_bias=False, router="
                               f"{model.config.router!r}); start a run with it, or leave the rate at 0")
        self.step = step                                   # iterations completed
        self.rng = rng if rng is not None else np.random.default_rng([tc.seed, 1])  # train batches
        self.history = history if history is not None else []   # one record per evaluation
        # accumulated over every session of this run (a resume continues them)
        self.totals = totals if totals is not None else {"train_s": 0.0, "wall_s": 0.0, "tokens": 0,
                                                         "iters_timed": 0}
        self.train_curve: list = self.totals.setdefault("train_curve", [])  # (iter, ce, aux, z) per step
        self.verbose = verbose
        self.bar: Progress | None = None
        self.last_checkpoint: str | None = None
        model.rotations(0, tc.block_size)                  # fill the RoPE table before the workers fork
        self.shards = Shards(model, tc.threads, tc.batch_size, tc.block_size)

    # --- construction ---------------------------------------------------------------------------------
    @classmethod
    def new(cls, tc: TrainConfig, dataset: Dataset | None = None, verbose: bool = True) -> "Trainer":
        """A fresh run: read the data, build the model from the preset, initialise AdamW."""
        tc = tc.resolved()
        tc.validate()
        if tc.init:
            model = initial_model(tc)
            dataset = dataset or build_dataset(tc.data, model.tokenizer, tc.block_size or model.config.max_seq_len,
                                               tc.val_fraction)
            tc.block_size = tc.block_size or model.config.max_seq_len
            return cls(tc, model, dataset, make_optimizer(tc, model), verbose=verbose)
        if dataset is None:
            block = tc.block_size or Config.preset(tc.preset).max_seq_len
            dataset = build_dataset(tc.data, tc.tokenizer, block, tc.val_fraction)
        cfg = model_config(tc, dataset)
        if not tc.block_size:
            tc.block_size = cfg.max_seq_len
        model = Model(cfg, seed=tc.seed, tokenizer=dataset.tokenizer)
        return cls(tc, model, dataset, make_optimizer(tc, model), verbose=verbose)

    @classmethod
    def resume(cls, folder: str, verbose: bool = True, **overrides) -> "Trainer":
        """Continue the run in `folder` from its newest checkpoint. `overrides` change settings
        (max_iters, out, eval_interval, ...); changing the schedule or the data breaks exactness."""
        from minimoe.io.checkpoint import load
        from minimoe.io.safetensors_file import read_tensors
        ckpt = latest_checkpoint(folder)
        state_path = os.path.join(ckpt, "train_state.json")
        state = read_state(state_path)
        tc = TrainConfig.from_dict(state["train_config"], source=state_path)
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)})
        if unknown:
            raise MinimoeError(f"unknown training setting(s) {unknown}")
        overrides = _agreeing_overrides(folder, tc, overrides)
        tc = dataclasses.replace(tc, **overrides)
        if "out" not in overrides:
            tc.out = folder
        if not tc.threads:                                 # a state from before --threads: one shard
            tc.threads = 1
        try:
            tc.validate()
        except MinimoeError as e:
            raise CheckpointError(f"{state_path}: {e}") from None
        model = load(ckpt)
        dataset = build_dataset(tc.data, model.tokenizer, tc.block_size, tc.val_fraction)
        if dataset.md5 != state["data"]["md5"]:
            raise DataError(f"{tc.data}: the text differs from the one this run trained on (md5 "
                            f"{dataset.md5}, the checkpoint says {state['data']['md5']}); resume with "
                            f"the same --data")
        opt = make_optimizer(tc, model)
        tensors, _ = read_tensors(os.path.join(ckpt, "optimizer.safetensors"))
        opt.load_state(tensors, state["optimizer"], source=os.path.join(ckpt, "optimizer.safetensors"))
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = state["rng"]
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{state_path}: rng is not a state of NumPy's {type(rng.bit_generator).__name__} "
                                  f"({e})") from None
        trainer = cls(tc, model, dataset, opt, step=state["step"], rng=rng,
                      history=state["history"], totals=state["totals"], verbose=verbose)
        trainer.last_checkpoint = ckpt
        return trainer

    # --- one step -------------------------------------------------------------------------------------
    def train_step(self) -> dict:
        """One optimiser step (over grad_accum micro-batches). Returns the step's losses, gradient
        norm and learning rate. Raises TrainingDiverged, before changing any parameter, if a loss
        or gradient is not finite."""
        tc, model = self.tc, self.model
        lr = lr_at(self.step, tc.lr, tc.min_lr, tc.warmup_iters, tc.lr_decay_iters)
        scale = 1.0 / tc.grad_accum                        # the step's loss is the micro-batches' mean
        grads = None
        ce_sum = aux_sum = z_sum = 0.0
        counts: dict = {}                                  # assignments per expert, per layer, this step
        for micro in range(tc.grad_accum):
            x, y = self.data.batch("train", tc.batch_size, tc.block_size, self.rng)   # (B, T) each
            # forward and cross-entropy, one shard per core, routing as in training
            noise = moe.draw_noise(model.config, *x.shape,
                                   np.random.default_rng([tc.seed, 3, self.step * tc.grad_accum + micro]),
                                   model.dtype)                                      # (L, B, T, E) or None
            fwd = self.shards.forward(x, y, True, noise)                              # [(ce, routing)]
            sizes = [r.stop - r.start for r in self.shards.rows]
            ce = sum(f[0] * n for f, n in zip(fwd, sizes)) / len(x)                  # mean over all rows
            # the router losses over the whole micro-batch (f_e and P_e are batch averages)
            routing = merge_routing([f[1] for f in fwd])
            if tc.bias_update_rate:
                for i, c in balance.expert_counts(routing, model.config.n_experts).items():
                    counts[i] = counts.get(i, 0) + c
            aux, daux = losses.load_balancing_loss(routing, tc.aux_loss_coef * scale, tc.aux_loss_form,
                                                   tc.block_size)
            z, dz = losses.z_loss(routing, tc.z_loss_coef * scale)
            total = ce + tc.aux_loss_coef * aux + tc.z_loss_coef * z
            if not math.isfinite(total):
                bad = next((r for r, f in zip(self.shards.rows, fwd) if not math.isfinite(f[0])),
                           self.shards.rows[0])
                cache = forward_shard(model, x[bad], y[bad])[0]                      # again, here (eval routing)
                self._diverged(f"the loss is {total}", locate_nonfinite_forward(model, cache))
            tokens = [n * tc.block_size for n in sizes]   # router gradients are per token (N, E)
            daux_s = split_router_grads(daux if tc.aux_loss_coef else {}, tokens)
            dz_s = split_router_grads(dz if tc.z_loss_coef else {}, tokens)
            # backward, one shard per core; a shard's cross-entropy weighs by its share of rows
            parts = self.shards.backward([scale * n / len(x) for n in sizes],
                                         [losses.combine(da, dzz) for da, dzz in zip(daux_s, dz_s)])
            for g in parts:                                # summed in shard order: deterministic
                if grads is None:                          # parts[0]: this process's own arrays
                    grads = g
                else:
                    for name, arr in g.items():
                        grads[name] += arr
            ce_sum, aux_sum, z_sum = ce_sum + ce * scale, aux_sum + aux * scale, z_sum + z * scale
        norm = clip_by_global_norm(grads, tc.grad_clip)
        if not math.isfinite(norm):
            name = next(n for n, g in grads.items() if not np.isfinite(g).all())
            self._diverged(f"the gradient norm is {norm}", f"the gradient of {name} ({layer_of(name)})")
        self.opt.step(grads, lr)
        if tc.bias_update_rate:                            # loss-free balancing: after the step
            balance.update_biases(model.params, counts, tc.bias_update_rate)
        self.step += 1
        return {"ce": ce_sum, "aux": aux_sum, "z": z_sum, "grad_norm": norm, "lr": lr}

    def _diverged(self, what: str, where: str):
        keep = (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint
                else "no checkpoint was saved yet")
        raise TrainingDiverged(f"step {self.step}: {what}; first non-finite value: {where}. "
                               f"Stopped without updating; {keep}. Try a lower --lr or --grad-clip.",
                               self.step, where)

    # --- evaluation -----------------------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Mean cross-entropy over `eval_iters` batches of each split, the router losses and the
        expert load on val. The batches come from their own RNG (seeded by the step), so
        evaluating never changes the training batches."""
        tc, model = self.tc, self.model
        rng = np.random.default_rng([tc.seed, 2, self.step])
        out = {"iter": self.step}
        E = model.config.n_experts
        L = model.config.n_layers
        for split in ("train", "val"):
            ces, auxs, zs, dropped = [], [], [], []
            counts = [np.zeros(E) if model.config.is_moe_layer(i) else None for i in range(L)]
            kept = [np.zeros(E) if model.config.is_moe_layer(i) else None for i in range(L)]
            for _ in range(tc.eval_iters):
                x, y = self.data.batch(split, tc.batch_size, tc.block_size, rng)
                cache, ce, _ = forward_shard(model, x, y)                       # in this process
                ces.append(ce)
                routing = cache["routing"]
                auxs.append(losses.load_balancing_loss(routing, 0.0, tc.aux_loss_form, tc.block_size)[0])
                zs.append(losses.z_loss(routing, 0.0)[0])
                for i, stats in enumerate(routing):
                    if stats is not None:
                        counts[i] += stats["tokens_per_expert"]                     # (E,) chosen
                        kept[i] += stats.get("tokens_per_expert_kept", stats["tokens_per_expert"])  # run
                        dropped.append(stats.get("dropped_tokens", 0.0))
            out[f"{split}_loss"] = float(np.mean(ces))
            if split == "val":
                out["aux_loss"], out["z_loss"] = float(np.mean(auxs)), float(np.mean(zs))
                out["expert_load"] = [None if c is None else (c / c.sum()).round(5).tolist() for c in counts]
                if model.config.eval_capacity_factor or model.config.router == "expert_choice":
                    out["expert_load_kept"] = [None if c is None else (c / c.sum()).round(5).tolist() for c in kept]
                    out["dropped_tokens"] = float(np.mean(dropped))
        if model.config.router_correction_bias:
            out["correction_bias"] = [model.params[balance.bias_name(i)].round(5).tolist()
                                      if model.config.is_moe_layer(i) else None for i in range(L)]
        return out

    # --- the run --------------------------------------------------------------------------------------
    def run(self, until: int | None = None) -> dict:
        """Train from the current step to `until` (default max_iters), evaluating every
        eval_interval steps and checkpointing every ckpt_interval steps and at the end. Returns
        the metrics it writes to DIR/metrics.json."""
        tc = self.tc
        until = tc.max_iters if until is None else until
        os.makedirs(tc.out, exist_ok=True)
        keep_freed_memory()
        try:
            with blas_threads(1):                          # the shards are the parallelism: --threads
                return self._run(until)                    # cores, one single-threaded BLAS each
        finally:
            self.shards.close()                            # stop the worker processes

    def _run(self, until: int) -> dict:
        tc = self.tc
        session_t0 = time.perf_counter()
        wall0 = self.totals["wall_s"]
        tokens_per_step = tc.batch_size * tc.block_size * tc.grad_accum
        self._say(self.describe())
        self.bar = Progress(until, desc="train", initial=self.step, enabled=self.verbose)
        smooth = None
        status = "finished"
        try:
            if self.step == 0 and tc.eval_interval and not self.history:
                self._record_eval()
            while self.step < until:
                t0 = time.perf_counter()
                info = self.train_step()
                dt = time.perf_counter() - t0
                self.totals["train_s"] += dt
                self.totals["tokens"] += tokens_per_step
                self.totals["iters_timed"] += 1
                self.train_curve.append([self.step, round(info["ce"], 5), round(info["aux"], 5),
                                         round(info["z"], 5)])
                smooth = info["ce"] if smooth is None else 0.9 * smooth + 0.1 * info["ce"]
                fields = {"loss": f"{smooth:.3f}"}
                if self.model.config.is_moe:
                    fields.update(aux=f"{info['aux']:.3f}", z=f"{info['z']:.3f}")
                fields["tok/s"] = f"{self.totals['tokens'] / max(self.totals['train_s'], 1e-9) / 1e3:.1f}k"
                self.bar.update(1, **fields)
                self.totals["wall_s"] = wall0 + time.perf_counter() - session_t0
                if tc.eval_interval and self.step % tc.eval_interval == 0 and self.step < until:
                    self._record_eval()
                if tc.ckpt_interval and self.step % tc.ckpt_interval == 0 and self.step < until:
                    self.save_checkpoint()
        except TrainingDiverged as e:
            status = f"diverged: {e}"
            self.bar.close()
            self.totals["wall_s"] = wall0 + time.perf_counter() - session_t0
            self.write_metrics(status=status)
            raise
        except KeyboardInterrupt:
            self.bar.close()
            self.totals["wall_s"] = wall0 + time.perf_counter() - session_t0
            self.write_metrics(status="interrupted")
            raise
        self.bar.close()
        if not self.history or self.history[-1]["iter"] != self.step:
            self._record_eval()
        self.totals["wall_s"] = wall0 + time.perf_counter() - session_t0
        self.save_checkpoint()
        sample = self.sample()
        self.totals["wall_s"] = wall0 + time.perf_counter() - session_t0
        metrics = self.write_metrics(status=status, sample=sample)
        self._say(self.summary(metrics))
        return metrics

    def _record_eval(self) -> None:
        record = self.evaluate()
        record["lr"] = lr_at(max(self.step - 1, 0), self.tc.lr, self.tc.min_lr, self.tc.warmup_iters,
                             self.tc.lr_decay_iters)
        record["wall_s"] = round(self.totals["wall_s"], 3)
        record["train_s"] = round(self.totals["train_s"], 3)
        if self.history and record["iter"] > self.history[-1]["iter"]:     # speed since the last one
            prev = self.history[-1]
            record["ms_per_iter"] = round(1e3 * (record["train_s"] - prev.get("train_s", 0.0))
                                          / (record["iter"] - prev["iter"]), 2)
        self.history.append(record)
        line = f"step {self.step}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}"
        if self.model.config.is_moe:
            line += f" (val aux {record['aux_loss']:.3f}, z {record['z_loss']:.3f}; {load_spread(record)})"
        self._say(line)
        self.write_metrics(status="running")

    def _say(self, text: str) -> None:
        if not self.verbose:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    # --- checkpoints ----------------------------------------------------------------------------------
    def save_checkpoint(self) -> str:
        """Write a complete checkpoint of this step, then point LATEST at it (see the module doc).
        Nothing is deleted before LATEST names the new checkpoint, so a crash at any moment leaves
        the last good one loadable; the next save deletes what a killed one left behind."""
        root = os.path.join(self.tc.out, CHECKPOINT_DIR)
        with writing(root):
            os.makedirs(root, exist_ok=True)
        remove_stale_temps(root)                                   # what killed saves left behind
        name = f"step-{self.step:06d}"
        taken = set(os.listdir(root))
        for n in range(2, 1 << 30):                                # a re-save of the same step gets a
            if name not in taken:                                  # new name: the old one stays whole
                break                                              # until LATEST moves on
            name = f"step-{self.step:06d}-{n}"
        final = os.path.join(root, name)
        tmp = os.path.join(root, temp_name(name))
        try:
            self.model.save(tmp)                                   # config, tokenizer, model
            with atomic_path(os.path.join(tmp, "optimizer.safetensors")) as p:
                write_safetensors(p, self.opt.state_tensors(), metadata={"format": "minimoe-adamw", "t": str(self.opt.t)})
            atomic_write_text(os.path.join(tmp, "train_state.json"), json.dumps(self.state(), indent=1) + "\n")
            with writing(final):
                os.replace(tmp, final)                             # a new name: nothing is replaced
        except BaseException:                                      # an error or Ctrl-C: drop the half
            shutil.rmtree(tmp, ignore_errors=True)                 # (a kill -9 leaves it to the next save)
            raise
        atomic_write_text(os.path.join(root, "LATEST"), name + "\n")   # the commit point
        for old in os.listdir(root):                               # now the older checkpoints can go
            if old != name and (old.startswith("step-") or is_stale_temp(old)):
                shutil.rmtree(os.path.join(root, old), ignore_errors=True)
        self.model.save(self.tc.out)                               # the run's model, for generate/info
        self.last_checkpoint = final
        return final

    def state(self) -> dict:
        """Everything besides the tensors that a resume needs, as JSON-able data."""
        d = self.data
        return {"format": STATE_FORMAT, "version": 1, "step": self.step,
                "train_config": self.tc.to_dict(), "model_config": self.model.config.to_dict(),
                "rng": self.rng.bit_generator.state, "optimizer": self.opt.state_info(),
                "data": {"source": d.source, "description": d.description, "md5": d.md5,
                         "tokenizer": d.tokenizer.kind, "n_train": int(len(d.train)), "n_val": int(len(d.val))},
                "history": self.history, "totals": self.totals}

    # --- reporting ------------------------------------------------------------------------------------
    def sample(self) -> str:
        """A short continuation of a newline, sampled at the configured temperature."""
        tok = self.model.tokenizer
        if not self.tc.sample_tokens or tok is None:
            return ""
        try:
            prompt = tok.encode("\n")
        except MinimoeError:
            prompt = self.data.val[:1]
        if len(prompt) == 0:
            prompt = self.data.val[:1]
        out = self.model.generate(prompt, self.tc.sample_tokens, temperature=self.tc.sample_temperature,
                                  seed=self.tc.seed)
        return tok.decode(out[len(prompt):])

    def metrics(self, status: str = "finished", sample: str | None = None) -> dict:
        last = self.history[-1] if self.history else {}
        t = self.totals
        counts = self.model.param_counts()
        m = {"status": status, "preset": self.tc.preset, "data": self.data.description,
             "iters": self.step, "max_iters": self.tc.max_iters,
             "train_loss": last.get("train_loss"), "val_loss": last.get("val_loss"),
             "best_val_loss": min((h["val_loss"] for h in self.history), default=None),
             "aux_loss": last.get("aux_loss"), "z_loss": last.get("z_loss"),
             "tokens_per_s": round(t["tokens"] / t["train_s"], 1) if t["train_s"] else None,
             "ms_per_iter": round(1e3 * t["train_s"] / t["iters_timed"], 3) if t["iters_timed"] else None,
             "train_s": round(t["train_s"], 6), "wall_s": round(t["wall_s"], 3), "tokens": t["tokens"],
             "params": counts["total"], "active_params": counts["active"],
             "expert_load": last.get("expert_load"),
             "settings": self.tc.to_dict(), "model_config": self.model.config.to_dict(),
             "history": self.history, "train_curve": self.train_curve}
        if sample is not None:
            m["sample"] = sample
        return m

    def write_metrics(self, status: str, sample: str | None = None) -> dict:
        m = self.metrics(status, sample)
        atomic_write_text(os.path.join(self.tc.out, "metrics.json"), json.dumps(m, indent=1) + "\n")
        return m

    def describe(self) -> str:
        tc, cfg, c = self.tc, self.model.config, self.model.param_counts()
        moe = f"{cfg.n_experts} experts top-{cfg.top_k}" if cfg.is_moe else "dense"
        verb = "resuming at" if self.step else "from"
        name = f"{tc.init} (--init)" if tc.init else tc.preset
        return (f"training {name} ({moe}, {c['total']:,} parameters, {c['active']:,} active per token) "
                f"on {self.data.description}: {len(self.data.train):,} train / {len(self.data.val):,} val "
                f"tokens, vocab {cfg.vocab_size}; {verb} step {self.step} to {tc.max_iters}, batch "
                f"{tc.batch_size}x{tc.block_size}" + (f"x{tc.grad_accum}" if tc.grad_accum > 1 else "")
                + f", lr {tc.lr:g} -> {tc.min_lr:g}; writing {tc.out}")

    def summary(self, m: dict) -> str:
        lines = [f"done: {m['iters']} iterations, train loss {m['train_loss']:.4f}, val loss {m['val_loss']:.4f}; "
                 f"{m['ms_per_iter']:.1f} ms/iter, {m['tokens_per_s']:,.0f} tokens/s, wall "
                 f"{format_duration(m['wall_s'])}",
                 f"checkpoint: {self.last_checkpoint}  (minimoe generate --model {self.tc.out})"]
        if m.get("sample"):
            lines += ["", "sample:", m["sample"], ""]
        if self.model.config.is_moe and m.get("expert_load"):
            lines.append(expert_usage(m["expert_load"], self.model.config.top_k))
        return "\n".join(lines)


# --- helpers ---------------------------------------------------------------------------------------
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the system.

    Each training step allocates and frees hundreds of activation arrays of 0.1-1 MB. By default
    glibc serves blocks that large with mmap and unmaps them on free, so every new array costs
    page faults (the kernel zero-fills each 4 KB page on first touch): about a third of a step's
    time at this model size. Raising the mmap threshold (to its 32 MB maximum) and the trim
    threshold makes freed blocks stay in the heap and get reused, which is what PyTorch's caching
    allocator does for its tensors. Process-wide and harmless elsewhere; a no-op off glibc.
    Returns True if the settings took effect."""
    import ctypes
    import sys
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3   # from <malloc.h>
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
                    and libc.mallopt(M_TOP_PAD, 64 << 20))
    except (OSError, AttributeError):
        return False


def default_threads() -> int:
    """Shards per batch when --threads is not given: one per core, at most 2. (Tuned on a 2-core
    machine; more shards of a 12-row batch make thinner matrix products, and were not measured.)"""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:                                         # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


def initial_model(tc: TrainConfig) -> Model:
    """The model in folder `tc.init` (its weights and tokenizer), with `tc.model` overrides on its
    config. An override may add buffers (the correction bias, zeros) but no learned parameter."""
    from minimoe.io.checkpoint import load
    from minimoe.params import is_buffer, param_shapes
    start = load(tc.init, dtype=np.float32)             # trained in float32, whatever the storage
    changes = dict(tc.model)
    if tc.bias_update_rate:
        changes.setdefault("router_correction_bias", True)
    cfg = start.config.replace(**changes)
    params = dict(start.params)
    for name, shape in param_shapes(cfg).items():
        if name not in params:
            if not is_buffer(name):
                raise MinimoeError(f"--init {tc.init}: the overrides {sorted(changes)} add the parameter "
                                   f"{name!r}, which the model does not have; train it from a preset instead")
            params[name] = np.zeros(shape, start.dtype)
    extra = sorted(set(params) - set(param_shapes(cfg)))
    if extra:
        raise MinimoeError(f"--init {tc.init}: the overrides {sorted(changes)} drop the parameter {extra[0]!r}")
    return Model(cfg, params=params, tokenizer=start.tokenizer)


def make_optimizer(tc: TrainConfig, model: Model) -> AdamW:
    return AdamW(model.params, betas=(tc.beta1, tc.beta2), eps=tc.eps, weight_decay=tc.weight_decay,
                 decay_embeddings=tc.decay_embeddings, decay_norms=tc.decay_norms)


def read_state(path: str) -> dict:
    """A checkpoint's train_state.json, its fields' types checked (CheckpointError naming them)."""
    state = read_json(path, CheckpointError, expect=dict)
    if state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a minimoe training state (format {str(state.get('format'))[:40]!r})")
    for key, kind in (("step", int), ("train_config", dict), ("rng", dict), ("optimizer", dict),
                      ("data", dict), ("history", list), ("totals", dict)):
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise CheckpointError(f"{path}: {key} must be a JSON {_KIND[kind]}, found {str(state.get(key))[:60]}")
    if state["step"] < 0 or not isinstance(state["optimizer"].get("t"), int) or not isinstance(
            state["data"].get("md5"), str):
        raise CheckpointError(f"{path}: step, optimizer.t and data.md5 must be a count, a count and a string")
    for key, kind in (("train_s", (int, float)), ("wall_s", (int, float)), ("tokens", int), ("iters_timed", int)):
        if not isinstance(state["totals"].get(key), kind):
            raise CheckpointError(f"{path}: totals.{key} must be a number, found {state['totals'].get(key)!r}")
    return state


_KIND = {int: "integer", dict: "object", list: "array"}


def _agreeing_overrides(folder: str, tc: TrainConfig, overrides: dict) -> dict:
    """The overrides of a resume, without the ones that repeat the run's own settings. A run's
    preset, tokenizer and --set fields define its model, so a flag that changes one is refused;
    one that repeats it (a scheduler rerunning the same command line with --resume) is fine.
    --data may name the same text by another path: build_dataset's md5 check decides."""
    out = dict(overrides)
    for name, flag in (("preset", "--preset"), ("tokenizer", "--tokenizer"), ("model", "--set"),
                       ("init", "--init")):
        if name not in out:
            continue
        given, stored = out.pop(name), getattr(tc, name)
        same = (given.lower() == stored.lower()) if name == "preset" and isinstance(given, str) else given == stored
        if not same:
            shown = (lambda d: " ".join(f"{k}={json.dumps(v)}" for k, v in d.items()) or "(none)") if name == "model" else repr
            raise MinimoeError(f"--resume {folder}: the run was trained with {flag} {shown(stored)}; "
                               f"{flag} {shown(given)} would change its model. Leave the flag out, or "
                               f"give the run's own value")
    return out


def latest_checkpoint(folder: str) -> str:
    """The folder of the newest complete checkpoint of a run (named by DIR/checkpoint/LATEST)."""
    root = os.path.join(folder, CHECKPOINT_DIR)
    pointer = os.path.join(root, "LATEST")
    if not os.path.exists(pointer):
        raise CheckpointError(f"{folder}: no training checkpoint to resume ({pointer} is missing)")
    try:
        with open(pointer, "rb") as f:
            name = f.read(256).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        name = None
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise CheckpointError(f"{pointer}: must hold the name of a checkpoint folder beside it "
                              f"(such as step-000500)")
    ckpt = os.path.join(root, name)
    if not os.path.isdir(ckpt):
        raise CheckpointError(f"{pointer} names {name!r}, but {ckpt} is not a folder")
    return ckpt


def layer_of(name: str) -> str:
    """"layers.2.attn.q.weight" -> "layer 2 (attn.q.weight)"; other names as they are."""
    parts = name.split(".")
    if parts[0] == "layers" and len(parts) > 2:
        return f"layer {parts[1]} ({'.'.join(parts[2:])})"
    return {"embed.weight": "the embedding", "norm.weight": "the final norm",
            "head.weight": "the output head"}.get(name, name)


def locate_nonfinite_forward(model: Model, cache: dict) -> str:
    """Where a forward pass first produced a non-finite value: a parameter that already is one,
    else the first layer whose attention or FFN output is (read from the norm caches, which hold
    each sub-layer's normalised input), else the output head."""
    for name, arr in model.params.items():
        if isinstance(arr, np.ndarray) and not np.isfinite(arr).all():
            return f"parameter {name}, in {layer_of(name)}"
    x0 = cache["layers"][0][0][0] if cache["layers"] else None    # layer 0's normalised input
    if x0 is not None and not np.isfinite(x0).all():
        return "the embedding output"
    n = len(cache["layers"])
    for i, (n1, _, n2, _) in enumerate(cache["layers"]):
        if not np.isfinite(n2[0]).all():
            return f"layer {i} (the attention output, layers.{i}.attn)"
        nxt = cache["layers"][i + 1][0] if i + 1 < n else cache["norm"]
        if not np.isfinite(nxt[0]).all():
            kind = "moe" if model.config.is_moe_layer(i) else "ffn"
            return f"layer {i} (the {kind.upper()} output, layers.{i}.{kind})"
    return "the output head (logits)"


def load_spread(record: dict) -> str:
    """"expert load 9.8-15.1%" over the MoE layers of an evaluation record."""
    loads = [l for l in record.get("expert_load") or [] if l is not None]
    if not loads:
        return ""
    lo, hi = min(min(l) for l in loads), max(max(l) for l in loads)
    return f"expert load {100 * lo:.1f}-{100 * hi:.1f}%"


def expert_usage(expert_load: list, top_k: int) -> str:
    """A small table: per MoE layer, each expert's share of the top-k assignments on val."""
    rows = [l for l in expert_load if l is not None]
    E = len(rows[0])
    lines = [f"expert usage (share of the top-{top_k} assignments on val; even would be {100 / E:.1f}% each):",
             "         " + " ".join(f"{'e' + str(e):>6}" for e in range(E))]
    for i, load in enumerate(expert_load):
        if load is None:
            continue
        bar = " ".join(f"{100 * f:5.1f}%" for f in load)
        lines.append(f"layer {i:2d} {bar}   (busiest {max(load) * len(load):.1f}x even)")
    return "\n".join(lines)
