"""Data parallelism over processes: each core runs the forward and backward pass of its own
slice of the batch.

Shape legend: B batch, T block length, S shards, N tokens (rows x T), E experts, K top-k.

On a small model, about half of a training step is not matrix products but elementwise NumPy
(softmax, SwiGLU, RMSNorm, RoPE). That part runs on one core however many BLAS threads there
are. So the trainer splits each batch into S row shards: shard 0 runs in the trainer's process,
and shards 1..S-1 run in worker processes forked when training starts. Each process uses a
single-threaded BLAS, so `--threads S` means S cores. Threads would be simpler, but a step is
hundreds of short NumPy calls, and two threads handing the GIL back and forth measured
about 40% slower than two processes.

What crosses between processes, all through one block of shared memory (no pickling):

    the parameters        the workers' model arrays *are* the trainer's (the trainer moves them
                          into shared memory before forking), so AdamW's in-place update is
                          seen by every worker at the next step
    the batch             x, y (B, T) ids; each worker reads its rows (and noisy top-k's draws)
    the routing           each worker's router probs/logits (N, E) and choices (N, K) per MoE
                          layer, and back the router-loss gradients for them
    the gradients         each worker's, one flat float32 buffer
and one-byte commands over a pipe: "F" forward, "B" backward, "Q" quit.

The step computes exactly what the unsharded step computes, up to float rounding order:

    phase 1 (parallel)   each shard: forward, cross-entropy over its rows
    phase 2 (trainer)    the router losses over all shards' routing together (the
                         load-balancing loss is not a sum over tokens: f_e and P_e are batch
                         averages, so it needs the whole batch); their gradients are split back
    phase 3 (parallel)   each shard: backward, its cross-entropy weighted by its share of rows
    then the shards' gradients are summed in shard order, so the result is deterministic.

Without fork (Windows, macOS's default), inside a daemon process, or with S = 1, the shards run
one after the other in the trainer's process: the same arithmetic, on one core.
"""
from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import struct
import traceback
import weakref

import numpy as np

from minimoe.kernels.backend import blas_threads, openblas_threads  # noqa: F401 (re-exported)
from minimoe.nn import loss as cross_entropy


def shard_rows(B: int, n: int) -> list[slice]:
    """Split B rows into at most n contiguous, nearly equal slices."""
    n = max(1, min(n, B))
    bounds = np.linspace(0, B, n + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def merge_routing(routings: list[list]) -> list:
    """Per-shard routing stats (one list per shard, one entry per layer) -> one list whose
    entries hold the shards' rows concatenated: "probs", "logits" (N, E), "experts" (N, K)."""
    merged = []
    for layer_stats in zip(*routings):
        if layer_stats[0] is None:
            merged.append(None)
            continue
        merged.append({key: np.concatenate([s[key] for s in layer_stats])
                       for key in ("probs", "logits", "experts")})
    return merged


def split_router_grads(grads: dict, sizes: list[int]) -> list[dict]:
    """{layer: (N, E) array} over all tokens -> one such dict per shard, split by rows."""
    cuts = np.cumsum(sizes)[:-1]
    out = [dict() for _ in sizes]
    for layer, g in grads.items():
        for shard, part in zip(out, np.split(g, cuts)):
            shard[layer] = part
    return out


def forward_shard(model, x, y, train: bool = False, noise=None):
    """(forward cache, cross-entropy, its cache) of one shard's rows. train=True routes as in
    training (capacity_factor; noisy top-k's draws `noise` (L, b, T, E)); see Model.forward."""
    logits, cache = model.forward(x, train=train, noise=noise)               # (b, T, V)
    ce, ce_cache = cross_entropy.forward(logits, y)
    return cache, ce, ce_cache


def backward_shard(model, fwd, dloss, router_grads):
    """Gradients of one shard: its cross-entropy scaled by dloss, plus the router-loss gradients
    {layer: (dprobs or None, dlogits or None)}."""
    cache, _, ce_cache = fwd
    return model.backward(cross_entropy.backward(dloss, ce_cache), cache, router_grads)


# --- shared memory -------------------------------------------------------------------------------------
class Arena:
    """Named NumPy arrays carved out of one anonymous shared mapping (inherited by forked children)."""

    def __init__(self, specs: dict):
        offsets, total = {}, 0
        for name, (shape, dtype) in specs.items():
            total = (total + 63) // 64 * 64                      # 64-byte aligned
            offsets[name] = total
            total += int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        self.buf = mmap.mmap(-1, max(total, 1))                  # MAP_SHARED | MAP_ANONYMOUS
        self.arrays = {name: np.frombuffer(self.buf, dtype, int(np.prod(shape, dtype=np.int64)),
                                           offsets[name]).reshape(shape)
                       for name, (shape, dtype) in specs.items()}

    def __getitem__(self, name):
        return self.arrays[name]


def share_parameters(model) -> Arena:
    """Move every parameter into shared memory (same values, new arrays) and refresh the model's
    arrays. The dict object is kept, so an optimiser holding it sees the new arrays."""
    arena = Arena({name: (a.shape, a.dtype) for name, a in model.params.items()})
    for name, a in model.params.items():
        arena[name][...] = a
        model.params[name] = arena[name]
    return arena


# --- the shards ------------------------------------------------------------------------------------
class Shards:
    """Runs the shards of a batch: shard 0 here, the others in forked workers (see the module doc).

        fwd = shards.forward(x, y, train, noise) # [(ce, routing), ...] one per shard
        parts = shards.backward(dlosses, router_grads)  # [grads, ...] one dict per shard
    """

    def __init__(self, model, n: int, batch_size: int, block_size: int):
        self.model, self.n = model, max(1, min(int(n), batch_size))
        self.B, self.T = batch_size, block_size
        self.workers: list = []                            # (process, pipe) of shards 1..n-1
        self.local: list = []                              # forward results of shards run here
        self.rows: list[slice] = []
        # fork, and not from a daemon process (which may not have children): else run in turn here
        self.forked = (self.n > 1 and "fork" in mp.get_all_start_methods()
                       and not mp.current_process().daemon)

    # --- starting and stopping ------------------------------------------------------------------
    def _start(self):
        """Share the parameters, lay out the buffers and fork the workers (once)."""
        model, cfg = self.model, self.model.config
        share_parameters(model)
        self.param_shapes = {n: a.shape for n, a in model.params.items()}
        n_params = sum(a.size for a in model.params.values())
        dtype = next(iter(model.params.values())).dtype
        rows_max = -(-self.B // self.n)                    # ceil(B / n)
        N, E, K = rows_max * self.T, cfg.n_experts, cfg.route_width   # K: or E, for expert choice
        moe = [i for i in range(cfg.n_layers) if cfg.is_moe_layer(i)]
        specs = {"x": ((self.B, self.T), np.int64), "y": ((self.B, self.T), np.int64)}
        if cfg.router == "noisy_topk":                     # the routing noise of the batch
            specs["noise"] = ((cfg.n_layers, self.B, self.T, E), dtype)
        for w in range(1, self.n):
            specs[f"ce{w}"] = ((1,), np.float64)
            specs[f"grads{w}"] = ((n_params,), dtype)
            for i in moe:
                for part, shape, dt in (("probs", (N, E), dtype), ("logits", (N, E), dtype),
                                        ("experts", (N, K), np.int64), ("dprobs", (N, E), dtype),
                                        ("dlogits", (N, E), dtype)):
                    specs[f"{part}{w}.{i}"] = (shape, dt)
        self.arena = Arena(specs)
        self.moe_layers = moe
        ctx = mp.get_context("fork")
        for w in range(1, self.n):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(self, w, theirs, ours), daemon=True,
                               name=f"minimoe-shard-{w}")
            proc.start()
            theirs.close()
            self.workers.append((proc, ours))
        self._finalizer = weakref.finalize(self, _stop_workers, list(self.workers))

    def close(self) -> None:
        if self.workers:
            self._finalizer()
            self.workers = []

    # --- the two parallel phases ------------------------------------------------------------------
    def forward(self, x, y, train: bool = False, noise=None) -> list:
        """Phase 1. x, y (B, T) -> per shard (cross-entropy of its rows, its routing stats).
        train: route as in training; noise (L, B, T, E): noisy top-k's draws, split by rows too."""
        self.rows = shard_rows(len(x), self.n)
        part = lambda r: None if noise is None else noise[:, r]          # (L, b, T, E)
        if not self.forked:
            self.local = [forward_shard(self.model, x[r], y[r], train, part(r)) for r in self.rows]
            return [(f[1], _routing(f[0])) for f in self.local]
        if not self.workers:
            self._start()
        self.arena["x"][:len(x)], self.arena["y"][:len(y)] = x, y
        if noise is not None:
            self.arena["noise"][:, :len(x)] = noise
        for w, (_, pipe) in enumerate(self.workers, start=1):
            r = self.rows[w]
            pipe.send_bytes(b"F" + struct.pack("<qqqq", r.start, r.stop, train, noise is not None))
        r0 = self.rows[0]
        self.local = [forward_shard(self.model, x[r0], y[r0], train, part(r0))]
        out = [(self.local[0][1], _routing(self.local[0][0]))]
        for w, (proc, pipe) in enumerate(self.workers, start=1):
            _expect_ok(proc, pipe)
            n = (self.rows[w].stop - self.rows[w].start) * self.T
            routing = [None] * self.model.config.n_layers
            for i in self.moe_layers:
                routing[i] = {part: self.arena[f"{part}{w}.{i}"][:n] for part in ("probs", "logits", "experts")}
            out.append((float(self.arena[f"ce{w}"][0]), routing))
        return out

    def backward(self, dlosses: list[float], router_grads: list[dict]) -> list[dict]:
        """Phase 3. Per shard: the scale of its cross-entropy and its router-loss gradients
        {layer: (dprobs or None, dlogits or None)} -> its parameter gradients, by name."""
        if not self.forked:
            return [backward_shard(self.model, f, d, g) for f, d, g in zip(self.local, dlosses, router_grads)]
        for w, (_, pipe) in enumerate(self.workers, start=1):
            flags = 0
            n = (self.rows[w].stop - self.rows[w].start) * self.T
            for i, (dp, dl) in router_grads[w].items():
                if dp is not None:
                    self.arena[f"dprobs{w}.{i}"][:n] = dp
                    flags |= 1
                if dl is not None:
                    self.arena[f"dlogits{w}.{i}"][:n] = dl
                    flags |= 2
            pipe.send_bytes(b"B" + struct.pack("<dq", dlosses[w], flags))
        parts = [backward_shard(self.model, self.local[0], dlosses[0], router_grads[0])]
        for w, (proc, pipe) in enumerate(self.workers, start=1):
            _expect_ok(proc, pipe)
            parts.append(self._grad_views(w))
        return parts

    def _grad_views(self, w: int) -> dict:
        flat, out, a = self.arena[f"grads{w}"], {}, 0
        for name, shape in self.param_shapes.items():
            size = int(np.prod(shape, dtype=np.int64))
            out[name] = flat[a:a + size].reshape(shape)
            a += size
        return out


def _routing(cache) -> list:
    return [None if s is None else {k: s[k] for k in ("probs", "logits", "experts")} for s in cache["routing"]]


def _expect_ok(proc, pipe) -> None:
    from minimoe.errors import MinimoeError
    try:
        msg = pipe.recv_bytes()
    except (EOFError, OSError):
        raise MinimoeError(f"training shard process {proc.name} died (exit code {proc.exitcode})") from None
    if msg != b"ok":
        raise MinimoeError(f"training shard process {proc.name} failed:\n{msg[1:].decode('utf-8', 'replace')}")


def _stop_workers(workers) -> None:
    for proc, pipe in workers:
        try:
            pipe.send_bytes(b"Q")
        except OSError:
            pass
    for proc, pipe in workers:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
        pipe.close()


def _worker_main(shards: Shards, w: int, pipe, trainer_end) -> None:
    """A worker's loop: forward its rows on "F", backward on "B", exit on "Q", or when the trainer
    is gone: its end of the pipe closed, or (if anything else still holds that end open) the
    worker re-parented to another process."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)         # Ctrl-C is the trainer's to handle
    trainer_end.close()                                  # fork copied the trainer's ends of this pipe
    for _, other in shards.workers:                      # and of the earlier workers' pipes: while
        other.close()                                    # any copy is open, no EOF would ever come
    trainer = os.getppid()
    model, arena, T = shards.model, shards.arena, shards.T
    fns = openblas_threads()
    if fns is not None:
        fns[1](1)                                        # (get, set): one BLAS thread per worker
    fwd, rows = None, None
    while True:
        try:
            if not pipe.poll(1.0):
                if os.getppid() != trainer:
                    return
                continue
            msg = pipe.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            if msg[:1] == b"F":
                start, stop, train, noisy = struct.unpack("<qqqq", msg[1:])
                rows = (start, stop)
                noise = np.array(arena["noise"][:, start:stop]) if noisy else None
                fwd = forward_shard(model, np.array(arena["x"][start:stop]), np.array(arena["y"][start:stop]),
                                    bool(train), noise)
                arena[f"ce{w}"][0] = fwd[1]
                n = (stop - start) * T
                for i in shards.moe_layers:
                    stats = fwd[0]["routing"][i]
                    for part in ("probs", "logits", "experts"):
                        arena[f"{part}{w}.{i}"][:n] = stats[part]
            elif msg[:1] == b"B":
                dloss, flags = struct.unpack("<dq", msg[1:])
                n = (rows[1] - rows[0]) * T
                router_grads = {i: (arena[f"dprobs{w}.{i}"][:n] if flags & 1 else None,
                                    arena[f"dlogits{w}.{i}"][:n] if flags & 2 else None)
                                for i in shards.moe_layers}
                grads = backward_shard(model, fwd, dloss, router_grads)
                flat, a = arena[f"grads{w}"], 0
                for name in shards.param_shapes:
                    g = grads[name]
                    flat[a:a + g.size] = g.reshape(-1)
                    a += g.size
                fwd = None
            else:                                                # "Q" or anything unknown
                return
            pipe.send_bytes(b"ok")
        except BaseException:                                     # report, keep serving
            pipe.send_bytes(b"E" + traceback.format_exc().encode("utf-8"))


