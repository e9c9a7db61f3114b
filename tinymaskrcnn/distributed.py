"""Data-parallel training on Ray: N workers share every step's batch
(docs/architecture.md, Training on many cores or machines).

Each worker is a Ray actor holding a model replica. One step of B images on N workers:

    driver     weights = ray.put(state.pack(model))            # one copy in Ray's store
    worker w   losses_w, counts_w = forward(weights, its share of the batch)
    driver     factors_w = counts_w / sum of counts, per loss   # see below
    worker w   grads_w = backward(factors_w)                    # of sum_k factor_wk loss_wk
    driver     grad = sum_w grads_w; optimizer.step()           # one SGD step, as in train.py

Weights and gradients travel as one flat vector each (``FlatLayout``), not as ~160 named
arrays: Ray then moves one buffer through its shared-memory store, which a worker reads in
place, and the per-array serialisation that took 20 ms of a 0.18 s step is gone.

The batch of a step is ``train.batch_at``'s: worker w builds the images at positions
``step * B + shares(B, N)[w]`` itself (``data.batching.examples_at``), so only weights
and gradients travel, and the batch is the same whatever N.

**Why the factors.** torchvision normalises each loss over the whole batch's samples, not
per image (docs/architecture.md, Losses): the RPN's two losses divide by S, the sampled
anchors of all images; the box head's two by K, the sampled RoIs; the mask loss by
P * 28 * 28, P the positive RoIs. A worker alone divides by its own S_w, K_w, P_w, so
with L_w its loss over its share,

    L = (1 / S) sum over the batch's anchors = sum_w (S_w / S) L_w      (and K, P alike)

and the one-process gradient is the sum over workers of the gradient of
``sum_k factor_wk * loss_wk`` with factor ``S_w / S`` for the RPN's losses, ``K_w / K``
for the box head's and ``P_w / P`` for the mask loss (0 when the batch has none). Weights
by images (B_w / B) would be exact only when every image samples as many anchors, RoIs
and positives, which the mask loss's positives almost never do. The counts are known only
after every worker's forward, hence the two calls per step. Summed this way an N-worker
step equals the one-process step to float rounding (tests/test_distributed.py: 1e-12
relative in float64) when three things hold:

- the whole batch's statistics: with ``norm_layer="batch_norm"`` (the shapes preset)
  and ``TrainSettings.sync_batch_norm`` (the default) the workers' batch norms are
  synchronised, as torch's SyncBatchNorm: at each one every worker sends its share's
  count, mean and variance over its links to the others (``PeerSockets``) and
  normalises with the pooled
  statistics of the whole batch, and in backward the two per-channel sums of its gradient
  are summed over the workers likewise, so the step is the one-process step (tested like
  the frozen case). Unsynchronised, each worker normalises over its own share, as torch's
  DistributedDataParallel alone, so the gradient is that of a different function (on
  2-image shares of the shapes preset, a held-out AP50 of 0.82 instead of 0.99 after the
  recipe's 3600 steps; README, "Training on many cores or machines"); the running
  statistics the driver keeps are then the shares' pooled (``update_batch_norms``);
- the same samples: the anchor and RoI samplers draw from a generator per worker and
  step, ``np.random.default_rng([seed, step, first position of the share])``, so a run is
  reproducible for a given N, and a run resumed with another N continues exactly as a run
  with that N would (nothing about the workers is in the checkpoint), but different N
  draw different (equally distributed) samples; with samplers that take every candidate
  (batch sizes per image above the candidates) N changes nothing;
- the same padding: the transform pads a share to its own largest image, so with images
  of different sizes a worker may see fewer padded anchors than the whole batch would
  (shapes images are all one size).

**Costs.** Per step the driver sends the weights (4 bytes per parameter in float32; one
``ray.put``, shared by the workers of a machine) and receives as many bytes of gradient
from each worker; ``StepTime`` logs the
slowest worker's compute, the rest of the wall time of the two calls (transfer and
waiting) and the driver's update. README, "Training on many cores or machines", has the
measured numbers and the worker count where the driver's link becomes the bottleneck.

Shapes used below:
    B: images per step      N: workers      B_w: images of worker w (sum_w B_w = B)
    F: floating-point entries of the state (parameters and batch-norm statistics)
    P: entries of the trainable parameters
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import struct
import time

import numpy as np

from .data.batching import examples_at
from .kernels import use_backend
from .model import LOSS_NAMES, MaskRCNN
from .nn import BatchNorm2d
from .nn.layers import pooled_statistics
from .run_folder import StepTime
from .train_state import check_finite

# Which sample count normalises each loss (the module docstring's S, K and P).
LOSS_COUNTS = {
    "loss_objectness": "sampled_anchors",
    "loss_rpn_box_reg": "sampled_anchors",
    "loss_classifier": "sampled_rois",
    "loss_box_reg": "sampled_rois",
    "loss_mask": "positive_rois",
}

# One core per worker: Ray places each actor on one CPU, and more threads than cores per
# process only make the workers of a machine steal from each other.
_ONE_THREAD = {
    name: "1"
    for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
}


@contextlib.contextmanager
def _workers_at_normal_priority():
    """A local cluster started inside this block runs its workers at nice 0.

    Ray starts worker processes at nice 15 (its ``worker_niceness``) so that they yield to
    its own daemons; here the workers are the whole computation, one per core, and at 15
    every other process of the machine (the driver's update, Ray's own threads) preempts
    them mid-step. The raylet reads ``RAY_worker_niceness`` when it starts; a value the
    user set is kept.
    """
    name = "RAY_worker_niceness"
    before = os.environ.get(name)
    os.environ.setdefault(name, "0")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)


def import_ray():
    """The ``ray`` module, or ImportError saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ImportError(
            'training with --workers needs Ray: pip install -e ".[distributed]" '
            f"(or pip install 'ray>=2.9'); importing it failed: {err}"
        ) from err
    return ray


class WorkerLost(RuntimeError):
    """A worker died (its process was killed, its machine went away) during a step."""


def shares(batch_size: int, workers: int) -> list[range]:
    """The positions within a batch that each worker takes: as even as possible, the
    first ``batch_size % workers`` workers one image more (10 on 3: 4, 3, 3)."""
    if not 1 <= workers <= batch_size:
        raise ValueError(f"workers must be in [1, batch_size={batch_size}]; got {workers}")
    size, extra = divmod(batch_size, workers)
    bounds = np.cumsum([0] + [size + (w < extra) for w in range(workers)])
    return [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


# --- one vector per transfer ------------------------------------------------------------


class FlatLayout:
    """Where each named array of a model lies in one flat vector.

    Built from a model, so the driver and every worker (same config) get the same order;
    ``key`` (names and shapes) lets a worker check that it has the driver's layout.
    ``state`` covers the floating-point entries of ``state_dict()`` (parameters and
    batch-norm statistics, F in all); the integer counters (``num_batches_tracked``, a few
    scalars) travel beside it as a dict. ``grads`` covers the trainable parameters (P).
    """

    def __init__(self, model):
        state = model.state_dict()
        self.dtype = next(iter(model.parameters())).data.dtype
        self.state = self._slices(
            (n, a.shape) for n, a in state.items() if np.issubdtype(a.dtype, np.floating)
        )
        self.counters = [n for n, a in state.items() if not np.issubdtype(a.dtype, np.floating)]
        self.grads = self._slices(
            (n, p.data.shape) for n, p in model.named_parameters() if p.requires_grad
        )
        self.key = (
            tuple((n, s) for n, (_, s) in self.state.items()),
            tuple(self.counters),
            tuple(self.grads),
        )

    @staticmethod
    def _slices(named_shapes) -> dict:
        slices, start = {}, 0
        for name, shape in named_shapes:
            size = int(np.prod(shape))
            slices[name] = (slice(start, start + size), tuple(shape))
            start += size
        return slices

    @staticmethod
    def _size(slices) -> int:
        return max((sl.stop for sl, _ in slices.values()), default=0)

    def pack_state(self, model):
        """(vector (F,) of the model's dtype, counters: name -> array) of ``model``'s state."""
        flat = np.empty(self._size(self.state), dtype=self.dtype)
        counters = {}
        for name, array in _state_arrays(model):
            if name in self.state:
                sl, _ = self.state[name]
                flat[sl] = array.ravel()
            else:
                counters[name] = array.copy()
        return flat, counters

    def unpack_state(self, packed) -> dict:
        """``pack_state``'s pair as a state dict of views into the vector (no copies)."""
        flat, counters = packed
        state = {n: flat[sl].reshape(shape) for n, (sl, shape) in self.state.items()}
        return {**state, **counters}

    def pack_grads(self, model):
        """(vector (P,) of the gradients, names that have one: a tuple)."""
        flat = np.zeros(self._size(self.grads), dtype=self.dtype)
        present = []
        for name, p in model.named_parameters():
            if name in self.grads and p.grad is not None:
                flat[self.grads[name][0]] = p.grad.ravel()
                present.append(name)
        return flat, tuple(present)

    def unpack_grads(self, flat, present) -> dict:
        """name -> gradient view into ``flat``, for the names in ``present``."""
        return {n: flat[self.grads[n][0]].reshape(self.grads[n][1]) for n in present}


def _state_arrays(model):
    """(name, array) of every parameter and buffer, as ``state_dict()`` names them, without
    its copies."""
    for path, module in model.named_modules():
        for name, p in module._parameters.items():
            yield (f"{path}.{name}" if path else name), p.data
        for name in module._buffers:
            yield (f"{path}.{name}" if path else name), getattr(module, name)


# --- a worker ------------------------------------------------------------------------


class Replica:
    """One worker's model and data: the body of a Ray actor (``ray.remote(Replica)``), and
    an ordinary object in one process (the tests use it so).

    cfg: the MaskRCNNConfig; dataset: ``ds[i] -> (image, target)``, the run's training
    set (sent to the worker once, so on other machines its files must be at the same
    paths); seed, hflip, batch_size: the TrainSettings fields that make a batch;
    backend: the kernels' backend; dtype: of the parameters ("float32", or "float64" for
    the equality test). Each batch norm normalises over this worker's share until
    ``listen`` and ``link`` connect the workers' batch norms.
    """

    def __init__(self, cfg, dataset, seed, hflip, batch_size, backend, dtype="float32"):
        self.model = MaskRCNN(cfg, rng=np.random.default_rng(0)).train()
        if np.dtype(dtype) != np.float32:
            self.model.astype(np.dtype(dtype))
        self.dataset, self.seed, self.hflip = dataset, seed, hflip
        self.batch_size, self.backend = batch_size, backend
        self.layout = FlatLayout(self.model)
        self.synced = self.sockets = None

    def listen(self, rank: int, count: int, host: str | None = None) -> tuple[str, int]:
        """Open this worker's end of the workers' links (``PeerSockets``) as worker
        ``rank`` of ``count``; returns the (host, port) the others connect to."""
        self.sockets = PeerSockets(rank, count, host)
        return self.sockets.address

    def link(self, addresses: list[tuple[str, int]]) -> None:
        """Connect to every other worker (``addresses``: each one's ``listen``, in rank
        order; every worker must be in ``link`` at once) and synchronise the batch norms
        through those links."""
        self.sockets.connect(addresses)
        self.synced = SyncedBatchNorms(self.model, self.sockets)

    def where(self) -> tuple[str, int, str, tuple]:
        """(host name, process id, path of the tinymaskrcnn package it runs, the key of its
        FlatLayout)."""
        import tinymaskrcnn

        here = os.path.dirname(tinymaskrcnn.__file__)
        return socket.gethostname(), os.getpid(), here, self.layout.key

    def forward(self, state, step: int, share: range):
        """Load ``state`` (the driver's ``FlatLayout.pack_state``) and run the training
        forward on the images at ``share`` of step ``step``'s batch.

        Returns (losses: LOSS_NAMES -> float over this share, counts: LOSS_COUNTS' names
        -> int, seconds).
        """
        tic = time.perf_counter()
        self._step = step
        self.model.load_state_dict(self.layout.unpack_state(state))
        self._tracked = {p: int(bn.num_batches_tracked) for p, bn in _batch_norms(self.model)}
        self.model.zero_grad()
        if self.synced is not None:
            self.synced.begin(step, "forward")
        self.model.rng = np.random.default_rng([self.seed, step, share.start])
        first = step * self.batch_size
        positions = range(first + share.start, first + share.stop)
        images, targets = examples_at(self.dataset, positions, self.seed, self.hflip)
        counts = {}

        def count(stage, **arrays):
            if stage == "matching":
                pairs = zip(arrays["positive"], arrays["negative"], strict=True)
                counts["sampled_anchors"] = sum(int((p | n).sum()) for p, n in pairs)
            elif stage == "roi_features":
                counts["sampled_rois"] = len(arrays["labels"])
            elif stage == "mask_logits":
                counts["positive_rois"] = len(arrays["labels"])

        with use_backend(self.backend):
            losses = self.model(images, targets, trace=count)
        return losses, counts, time.perf_counter() - tic

    def backward(self, loss_weights: dict):
        """The gradient of ``sum_k loss_weights[k] * loss_k`` of the last forward.

        Returns (grads: ``FlatLayout.pack_grads``' pair, the parameters that got one;
        buffers: every buffer by name, and under "batch_statistics" the batch norms' that
        normalised this share once: path -> ``BatchNorm2d.batch_statistics``, none when
        they are synchronised, whose running statistics are already the whole batch's;
        seconds).
        """
        tic = time.perf_counter()
        if self.synced is not None:
            self.synced.begin(self._step, "backward")
        with use_backend(self.backend):
            self.model.backward(loss_weights)
        grads = self.layout.pack_grads(self.model)
        buffers = dict(self.model.named_buffers())
        buffers["batch_statistics"] = (
            {}
            if self.synced is not None
            else {
                path: bn.batch_statistics
                for path, bn in _batch_norms(self.model)
                if int(bn.num_batches_tracked) == self._tracked[path] + 1
            }
        )
        return grads, buffers, time.perf_counter() - tic


def _batch_norms(model):
    """(path, module) of every BatchNorm2d of ``model`` (those with batch statistics)."""
    return [(p, m) for p, m in model.named_modules() if isinstance(m, BatchNorm2d)]


# --- synchronised batch norm ------------------------------------------------------------


class SyncedBatchNorms:
    """Gives every BatchNorm2d of a worker's model an ``all_gather`` through ``peers``
    (its ``PeerSockets``).

    The workers run the same model on their shares, so their batch norms meet in the same
    order: the k-th gather of step s's forward (or backward) on one worker is the k-th on
    every other, and ``(s, "forward", k)`` names it in their messages. A batch norm's
    forward sends (count, mean, variance) of its share, its backward the two per-channel
    sums of its gradient: 2 C numbers, for each batch norm twice per step.
    """

    def __init__(self, model, peers):
        self.peers = peers
        self.key, self.calls = None, 0
        for _, bn in _batch_norms(model):
            bn.all_gather = self.all_gather

    def begin(self, step: int, phase: str) -> None:
        self.key, self.calls = (int(step), phase), 0

    def all_gather(self, value) -> list:
        key = (*self.key, self.calls)
        self.calls += 1
        return self.peers.gather(key, value)


class PeerLost(ConnectionError):
    """Another worker closed its link or went silent in the middle of a step."""


class PeerSockets:
    """The workers' all-gather for synchronised batch norm: a TCP connection between every
    two workers, each message one pickled (key, value) behind its 8-byte length.

    Ray moves the weights and gradients, but a call through it costs 1.3-3 ms here
    (driver or worker to an actor and back, measured), and a synchronised step needs 40
    gathers (two per batch norm of the shapes preset): 0.2 s of a 0.3 s step. A message
    on an open socket costs tens of microseconds, so the step pays only the waits for the
    slowest share. Ray's own collectives need gloo through torch or NCCL through a GPU,
    neither of which this package depends on.

    A gather sends this worker's value to every other and then reads theirs; the values
    (a few per-channel arrays) are far below a socket's buffer, so the sends never wait
    for a reader. ``timeout`` seconds of silence from a worker, or its link closing (its
    process died), raise PeerLost naming it.
    """

    def __init__(self, rank: int, count: int, host: str | None = None, timeout: float = 600.0):
        self.rank, self.count, self.timeout = int(rank), int(count), float(timeout)
        host = _node_address() if host is None else host
        self.listener = socket.create_server((host, 0), backlog=max(1, count))
        self.address = (host, self.listener.getsockname()[1])
        self.links = {}

    def connect(self, addresses) -> None:
        """Worker r connects to every lower rank and accepts every higher one: the kernel
        completes a connection before ``accept``, so no order of arrival waits forever."""
        for other in range(self.rank):
            host, port = addresses[other]
            try:
                link = socket.create_connection((host, port), timeout=self.timeout)
            except OSError as err:
                raise PeerLost(
                    f"worker {self.rank} cannot reach worker {other} at {host}:{port} ({err}); "
                    "synchronised batch norm needs the workers' machines to reach each other "
                    "on any TCP port (or train with --no-sync-batch-norm)"
                ) from None
            self._ready(link)
            _send(link, pickle.dumps(self.rank))
            self.links[other] = link
        self.listener.settimeout(self.timeout)
        for _ in range(self.rank + 1, self.count):
            try:
                link, _ = self.listener.accept()
            except TimeoutError:
                missing = sorted(set(range(self.rank + 1, self.count)) - set(self.links))
                raise PeerLost(
                    f"worker {self.rank} waited {self.timeout:.0f} s for workers {missing} "
                    f"to connect to {self.address[0]}:{self.address[1]}"
                ) from None
            self._ready(link)
            self.links[pickle.loads(_receive(link, "a worker that connected"))] = link
        self.listener.close()

    def _ready(self, link) -> None:
        link.settimeout(self.timeout)
        # Each message is one small write that the other side waits for: never delay it
        # to coalesce it with a next one (Nagle's algorithm would, by up to 40 ms).
        link.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def gather(self, key, value) -> list:
        """Every worker's ``value`` for ``key``, in rank order (this one's included)."""
        message = pickle.dumps((key, value), protocol=pickle.HIGHEST_PROTOCOL)
        for other, link in self.links.items():
            try:
                _send(link, message)
            except OSError as err:
                raise PeerLost(f"worker {other} is gone ({err}) at {key}") from None
        values = [None] * self.count
        values[self.rank] = value
        for other, link in self.links.items():
            got, values[other] = pickle.loads(_receive(link, f"worker {other}", key))
            if got != key:
                raise RuntimeError(
                    f"worker {other} sent {got} while worker {self.rank} was at {key}"
                )
        return values

    def close(self) -> None:
        for link in self.links.values():
            link.close()
        self.links = {}


def _node_address() -> str:
    """This machine's address on the Ray cluster (what the other machines reach it by),
    or the loopback outside Ray."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:
        pass
    return "127.0.0.1"


def _send(link, message: bytes) -> None:
    link.sendall(struct.pack("<Q", len(message)) + message)


def _receive(link, who: str, key=None) -> bytes:
    """One message of ``_send``'s: its 8-byte length, then that many bytes."""
    (size,) = struct.unpack("<Q", _read_exactly(link, 8, who, key))
    return _read_exactly(link, size, who, key)


def _read_exactly(link, size: int, who: str, key) -> bytes:
    at = "" if key is None else f" at {key}"
    chunks = []
    while size:
        try:
            chunk = link.recv(min(size, 1 << 20))
        except TimeoutError:
            raise PeerLost(f"{who} sent nothing for {link.gettimeout():.0f} s{at}") from None
        except OSError as err:
            raise PeerLost(f"{who} is gone ({err}){at}") from None
        if not chunk:
            raise PeerLost(f"{who} closed its link (its process ended){at}")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


# --- the driver's arithmetic ------------------------------------------------------------


def loss_factors(counts: list[dict]) -> list[dict]:
    """Each worker's ``loss_weights``: its share of the batch's count behind each loss
    (the module docstring), 0 where the whole batch has none."""
    totals = {name: sum(c.get(name, 0) for c in counts) for name in set(LOSS_COUNTS.values())}
    return [
        {
            loss: (c.get(name, 0) / totals[name] if totals[name] else 0.0)
            for loss, name in LOSS_COUNTS.items()
        }
        for c in counts
    ]


def combine_losses(losses: list[dict], factors: list[dict]) -> dict:
    """The whole batch's five losses from the workers' (LOSS_NAMES -> float)."""
    pairs = list(zip(losses, factors, strict=True))
    return {k: float(sum(f[k] * loss[k] for loss, f in pairs)) for k in LOSS_NAMES}


def sum_gradients(grads: list[tuple]) -> tuple:
    """The workers' ``FlatLayout.pack_grads`` pairs summed: (vector (P,), the names that
    got a gradient from any worker). A name a worker has no gradient for is zeros in its
    vector, so one vector sum adds exactly what a sum name by name would."""
    total = grads[0][0].copy()
    for flat, _ in grads[1:]:
        total += flat
    present = dict.fromkeys(name for _, names in grads for name in names)
    return total, tuple(present)


def update_batch_norms(model, buffers: list[dict], merged: dict) -> None:
    """Unsynchronised batch norms: the driver's take the running-statistics update of the
    whole batch (``pooled_statistics`` of the shares' ``batch_statistics``), as if one
    batch norm had seen every share's input at once (for the first batch norm, which sees
    the images, exactly one process's update), and their running statistics leave
    ``merged`` (``merge_buffers``' dict, loaded after this). The mean of the workers'
    running variances would miss the spread between the shares' means. A batch norm some
    worker did not run exactly once keeps ``merge_buffers``' value."""
    for path, bn in _batch_norms(model):
        shares = [b["batch_statistics"].get(path) for b in buffers]
        if all(s is not None for s in shares):
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                merged.pop(f"{path}.{name}", None)
            bn.update_running_statistics(*pooled_statistics(shares))


def merge_buffers(buffers: list[dict], images: list[int]) -> dict:
    """The buffers the driver keeps: where the workers agree (frozen statistics, counters)
    their common value; else the mean weighted by images (batch-norm running statistics,
    the module docstring)."""
    merged = {}
    for name, first in buffers[0].items():
        if name == "batch_statistics":
            continue
        values = [b[name] for b in buffers]
        same = all(np.array_equal(v, first) for v in values[1:])
        if same or not np.issubdtype(first.dtype, np.floating):
            merged[name] = first
        else:
            mean = sum(n * v.astype(np.float64) for n, v in zip(images, values, strict=True))
            merged[name] = (mean / sum(images)).astype(first.dtype)
    return merged


def data_parallel_step(workers, model, optimizer, step: int, batch_size: int, layout=None):
    """One SGD step of ``model`` on the batch of ``step`` shared by ``workers``.

    workers: has ``count`` (N), ``put(value) -> handle`` (shared by every worker) and
    ``call(method, args per worker) -> results per worker`` of Replica's methods.
    layout: ``model``'s FlatLayout (built here when None; a caller that steps many times
    keeps one). Returns (losses, their sum, StepTime), as train.py's one-process step.
    """
    tic = time.perf_counter()
    layout = FlatLayout(model) if layout is None else layout
    parts = shares(batch_size, workers.count)
    weights = workers.put(layout.pack_state(model))
    forwards = workers.call("forward", [(weights, step, part) for part in parts])
    factors = loss_factors([counts for _, counts, _ in forwards])
    losses = combine_losses([losses for losses, _, _ in forwards], factors)
    total = check_finite(losses, step, optimizer)
    backwards = workers.call("backward", [(f,) for f in factors])
    computed = time.perf_counter()

    grads = layout.unpack_grads(*sum_gradients([g for g, _, _ in backwards]))
    for name, p in model.named_parameters():
        p.grad = grads.get(name)
    optimizer.step()
    optimizer.zero_grad()
    images = [len(part) for part in parts]
    buffers = [b for _, b, _ in backwards]
    merged = merge_buffers(buffers, images)
    update_batch_norms(model, buffers, merged)
    model.load_state_dict(merged, strict=False)

    compute = max(s for _, _, s in forwards) + max(s for _, _, s in backwards)
    times = StepTime(compute, computed - tic - compute, time.perf_counter() - computed)
    return losses, total, times


# --- the workers on Ray ---------------------------------------------------------------


class RayWorkers:
    """``settings.workers`` Replica actors on a Ray cluster, for train.py's loop.

    address: None starts a local cluster of ``workers`` CPUs (shut down again by
    ``close``, Ctrl-C included); an address (``ray start --head`` prints it, "auto" finds
    a running one) joins that cluster, whose machines need tinymaskrcnn installed. A Ray
    already initialised in this process (``ray.init`` by the caller) is used as it is.
    """

    def __init__(self, model, dataset, settings, backend, address=None):
        ray = import_ray()
        self._ray = ray
        self.count = settings.workers
        self.batch_size = settings.batch_size
        self._owns_ray = not ray.is_initialized()
        self.actors = []
        self.synchronised = bool(
            settings.sync_batch_norm and self.count > 1 and _batch_norms(model)
        )
        try:
            if self._owns_ray:
                options = dict(include_dashboard=False, logging_level=logging.WARNING)
                if address is None:
                    with _workers_at_normal_priority():
                        ray.init(num_cpus=self.count, **options)
                else:
                    ray.init(address=address, **options)
            # Workers import the same tinymaskrcnn as this process (a checkout run in place
            # included), one thread each.
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
            env = {**_ONE_THREAD, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": path}
            actor = ray.remote(Replica).options(
                num_cpus=1, max_restarts=0, runtime_env={"env_vars": env}
            )
            dtype = str(next(iter(model.parameters())).data.dtype)
            s = settings
            self.actors = [
                actor.remote(model.cfg, dataset, s.seed, s.hflip, s.batch_size, backend, dtype)
                for _ in range(self.count)
            ]
            self.layout = FlatLayout(model)
            self.where = self.call("where", [()] * self.count)
            for w, (host, pid, package, key) in enumerate(self.where):
                if key != self.layout.key:
                    raise RuntimeError(
                        f"worker {w} (pid {pid} on {host}, tinymaskrcnn at {package}) builds "
                        "a model whose parameters differ from this process's; install the "
                        "same tinymaskrcnn version on every machine of the cluster"
                    )
            if self.synchronised:
                addresses = self.call("listen", [(w, self.count) for w in range(self.count)])
                self.call("link", [(addresses,)] * self.count)
        except BaseException:
            self.close()
            raise
        self._context = ""

    def put(self, value):
        return self._ray.put(value)

    def call(self, method: str, args: list[tuple]) -> list:
        """Run Replica.``method`` on every worker (``args[w]`` for worker w) and wait for
        all; a dead worker raises WorkerLost naming it. Results are taken as they come:
        with synchronised batch norms a dead worker's peers fail with PeerLost, which
        may arrive first: it is kept until the dead worker's own error names it."""
        refs = [getattr(a, method).remote(*x) for a, x in zip(self.actors, args, strict=True)]
        worker_of = {ref: w for w, ref in enumerate(refs)}
        results, pending, lost = [None] * len(refs), list(refs), None
        while pending:
            ready, pending = self._ray.wait(pending, num_returns=1)
            w = worker_of[ready[0]]
            try:
                results[w] = self._ray.get(ready[0])
            except self._ray.exceptions.RayActorError as err:
                where = getattr(self, "where", None)
                at = f" (pid {where[w][1]} on {where[w][0]})" if where else ""
                reason = str(err).strip().splitlines()[0]
                raise WorkerLost(
                    f"worker {w} of {self.count}{at} died{self._context}: {reason}"
                ) from None
            except PeerLost as err:  # Ray raises the worker's exception as its own type
                lost = lost or WorkerLost(f"worker {w} of {self.count} lost a peer: {err}")
        if lost is not None:
            raise lost
        return results

    def step(self, model, optimizer, step: int, checkpoint: str):
        """train.py's step on the workers: (losses, their sum, StepTime)."""
        kept = (
            f"{checkpoint} holds the last checkpoint, untouched: continue with --resume "
            "(any --workers)"
            if os.path.exists(checkpoint)
            else "no checkpoint had been written yet"
        )
        self._context = f" during step {step + 1}; the step is abandoned and {kept}. Ray said"
        return data_parallel_step(self, model, optimizer, step, self.batch_size, self.layout)

    def close(self):
        """Stop the workers, and the local cluster when this object started it."""
        for a in self.actors:
            try:
                self._ray.kill(a)
            except Exception:  # already dead: nothing to stop
                pass
        self.actors = []
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()
