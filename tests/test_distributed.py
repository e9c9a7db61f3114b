"""Data-parallel training (distributed.py): the N-worker step is the one-process step,
on replicas in this process and on a 2-worker local Ray cluster; a killed worker fails
the step cleanly and the run resumes on any worker count."""

import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from tiny_model import tiny_config

from tinymaskrcnn import distributed
from tinymaskrcnn.data.shapes import ShapesDataset
from tinymaskrcnn.distributed import (
    FlatLayout,
    PeerLost,
    PeerSockets,
    RayWorkers,
    Replica,
    WorkerLost,
    data_parallel_step,
    merge_buffers,
    shares,
)
from tinymaskrcnn.model import LOSS_NAMES, MaskRCNN
from tinymaskrcnn.nn import BatchNorm2d
from tinymaskrcnn.run_folder import CHECKPOINT, LOG, read_log
from tinymaskrcnn.train import batch_at, train
from tinymaskrcnn.train_state import TrainSettings, load_training_state

SEED = 3


def exact_config(**overrides):
    """No batch statistics and samplers that take every candidate (per image batch sizes
    far above the anchors and RoIs there are), so that a step has no randomness and
    splitting the batch can change nothing but rounding."""
    base = dict(
        anchor_sizes=((4,), (8,), (16,), (32,), (64,)),
        norm_layer="frozen_batch_norm",
        rpn_batch_size_per_image=10**6,
        box_batch_size_per_image=10**6,
    )
    return tiny_config(**{**base, **overrides})


@pytest.fixture(scope="module")
def data():
    return ShapesDataset(6, image_size=64, seed=5)


class RecordingSGD:
    """Stands in for nn.SGD: keeps the gradients the driver hands it instead of stepping."""

    lr = 0.01

    def __init__(self, model):
        self.model, self.grads = model, None

    def step(self):
        named = self.model.named_parameters()
        self.grads = {n: p.grad.copy() for n, p in named if p.grad is not None}

    def zero_grad(self):
        self.model.zero_grad()


class InProcessWorkers:
    """data_parallel_step's ``workers`` with Replicas in this process instead of actors."""

    def __init__(self, replicas):
        self.replicas, self.count = replicas, len(replicas)

    def put(self, value):
        return value

    def call(self, method, args):
        return [getattr(r, method)(*a) for r, a in zip(self.replicas, args, strict=True)]


def recording(gather, messages):
    def wrapped(key, value):
        messages.append(key)
        return gather(key, value)

    return wrapped


class ThreadedWorkers(InProcessWorkers):
    """Replicas on one thread each: synchronised batch norms wait for each other."""

    def call(self, method, args):
        with ThreadPoolExecutor(self.count) as pool:
            jobs = [
                pool.submit(getattr(r, method), *a)
                for r, a in zip(self.replicas, args, strict=True)
            ]
            return [job.result() for job in jobs]


def float64_model(cfg):
    return MaskRCNN(cfg, rng=np.random.default_rng(0)).astype(np.float64).train()


def one_process_step(cfg, data, batch_size, step=1):
    """(losses, gradients) of one process on the whole batch of ``step``."""
    model = float64_model(cfg)
    losses = model(*batch_at(data, step, batch_size, SEED))
    model.backward()
    return losses, {n: p.grad.copy() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_step(losses, grads, expected_losses, expected_grads):
    for name in LOSS_NAMES:
        np.testing.assert_allclose(losses[name], expected_losses[name], rtol=1e-12, err_msg=name)
    assert grads.keys() == expected_grads.keys()
    for name, g in expected_grads.items():
        scale = np.abs(g).max()
        assert np.abs(grads[name] - g).max() <= 1e-12 * scale, name


def test_a_batch_is_shared_as_evenly_as_possible():
    assert shares(10, 3) == [range(0, 4), range(4, 7), range(7, 10)]
    assert shares(4, 4) == [range(i, i + 1) for i in range(4)]


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
    from tinymaskrcnn.distributed import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # what a missing package looks like
    with pytest.raises(ImportError, match=r'pip install -e "\.\[distributed\]"'):
        import_ray()


def test_more_workers_than_images_is_refused():
    with pytest.raises(ValueError, match=r"workers \(3\) must not exceed batch_size \(2\)"):
        TrainSettings(batch_size=2, workers=3)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_n_workers_sum_to_the_one_process_gradient(data, workers):
    # 5 images: 5, 3 + 2 and 2 + 2 + 1 per worker; the workers sample different numbers
    # of anchors, RoIs and positives, which only the per-loss factors make exact.
    cfg, batch_size = exact_config(), 5
    expected = one_process_step(cfg, data, batch_size)
    replicas = [
        Replica(cfg, data, SEED, True, batch_size, "numpy", "float64") for _ in range(workers)
    ]
    model = float64_model(cfg)
    optimizer = RecordingSGD(model)
    losses, total, times = data_parallel_step(
        InProcessWorkers(replicas), model, optimizer, 1, batch_size
    )
    assert_same_step(losses, optimizer.grads, *expected)
    assert total == pytest.approx(sum(expected[0].values()), rel=1e-12)
    assert min(times.compute, times.update) > 0


@pytest.mark.parametrize("workers", [2, 3])
def test_synchronised_batch_norms_make_the_one_process_step(data, workers):
    # With batch norm on the whole batch, N workers compute the one-process function:
    # the same losses, gradients and running statistics (5 images: 3 + 2 and 2 + 2 + 1).
    cfg, batch_size = exact_config(norm_layer="batch_norm"), 5
    one = float64_model(cfg)
    expected_losses = one(*batch_at(data, 1, batch_size, SEED))
    one.backward()
    expected_grads = {n: p.grad.copy() for n, p in one.named_parameters() if p.grad is not None}
    replicas = [
        Replica(cfg, data, SEED, True, batch_size, "numpy", "float64") for _ in range(workers)
    ]
    on_threads = ThreadedWorkers(replicas)
    addresses = [r.listen(w, workers, "127.0.0.1") for w, r in enumerate(replicas)]
    on_threads.call("link", [(addresses,)] * workers)
    messages = []
    for r in replicas:  # count the messages each worker sends
        r.sockets.gather = recording(r.sockets.gather, messages)
    model = float64_model(cfg)
    optimizer = RecordingSGD(model)
    losses, _, _ = data_parallel_step(on_threads, model, optimizer, 1, 5)
    assert_same_step(losses, optimizer.grads, expected_losses, expected_grads)
    want, got = dict(one.named_buffers()), dict(model.named_buffers())
    paths = [p for p, m in model.named_modules() if isinstance(m, BatchNorm2d)]
    assert paths
    for path in paths:
        for name in ("running_mean", "running_var"):
            key = f"{path}.{name}"
            np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-15, err_msg=key)
        assert got[f"{path}.num_batches_tracked"] == want[f"{path}.num_batches_tracked"]
    # Each worker met the others twice per batch norm (forward and backward).
    assert len(messages) == workers * 2 * len(paths)
    for r in replicas:
        r.sockets.close()
    # Unsynchronised, the same step is a different function past the first batch norm.
    replicas = [Replica(cfg, data, SEED, True, 5, "numpy", "float64") for _ in range(workers)]
    alone, _, _ = data_parallel_step(InProcessWorkers(replicas), model, RecordingSGD(model), 1, 5)
    assert abs(alone["loss_mask"] - expected_losses["loss_mask"]) > 1e-9


def test_a_worker_whose_peer_dies_says_which_one_is_gone():
    ends = [PeerSockets(rank, 2, "127.0.0.1", timeout=5) for rank in range(2)]
    addresses = [end.address for end in ends]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda end: end.connect(addresses), ends))
    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(end.gather, (1, "forward", 0), r * 10) for r, end in enumerate(ends)]
        assert [job.result() for job in jobs] == [[0, 10], [0, 10]]
    ends[1].close()  # what its process ending does to its sockets
    with pytest.raises(
        PeerLost, match=r"worker 1 (closed its link|is gone).* at \(1, 'forward', 1\)"
    ):
        ends[0].gather((1, "forward", 1), 0)
    ends[0].close()


def test_a_flat_vector_carries_the_state_and_the_gradients_exactly(data):
    cfg = tiny_config()  # batch norm: running statistics and integer counters too
    model = MaskRCNN(cfg, rng=np.random.default_rng(1)).train()
    model(*batch_at(data, 0, 2, SEED))
    model.backward()
    layout = FlatLayout(model)
    state = model.state_dict()
    packed = layout.pack_state(model)
    assert packed[0].dtype == np.float32 and set(packed[1]) == set(layout.counters)
    assert layout.counters and all(n.endswith("num_batches_tracked") for n in layout.counters)
    unpacked = layout.unpack_state(packed)
    assert unpacked.keys() == state.keys()
    for name, array in state.items():
        np.testing.assert_array_equal(unpacked[name], array, err_msg=name)
    other = MaskRCNN(cfg, rng=np.random.default_rng(2)).train()
    other.load_state_dict(unpacked)
    for name, array in other.state_dict().items():
        np.testing.assert_array_equal(array, state[name], err_msg=name)
    grads = layout.unpack_grads(*layout.pack_grads(model))
    expected = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == expected.keys()
    for name, g in expected.items():
        np.testing.assert_array_equal(grads[name], g, err_msg=name)
    assert FlatLayout(other).key == layout.key
    assert FlatLayout(MaskRCNN(tiny_config(num_classes=5))).key != layout.key


@pytest.mark.parametrize("workers", [2, 3])
def test_the_driver_pools_the_shares_batch_norm_statistics(data, workers, monkeypatch):
    # With batch norm each worker normalises over its share (as DDP without SyncBatchNorm),
    # so past the first batch norm the activations differ from one process's. The running
    # statistics the driver keeps are those of the workers' activations pooled over the
    # whole batch: as if one batch norm had seen every share's input at once.
    inputs = {}
    forward = BatchNorm2d.forward

    def recording(bn, x):
        inputs.setdefault(id(bn), []).append(x.copy())
        return forward(bn, x)

    monkeypatch.setattr(BatchNorm2d, "forward", recording)
    cfg, batch_size = exact_config(norm_layer="batch_norm"), 5
    replicas = [
        Replica(cfg, data, SEED, True, batch_size, "numpy", "float64") for _ in range(workers)
    ]
    model = float64_model(cfg)
    before = {n: b.copy() for n, b in model.named_buffers()}
    data_parallel_step(InProcessWorkers(replicas), model, RecordingSGD(model), 1, batch_size)
    got = dict(model.named_buffers())
    paths = [p for p, m in model.named_modules() if isinstance(m, BatchNorm2d)]
    assert paths
    for path in paths:
        xs = [inputs[id(dict(r.model.named_modules())[path])] for r in replicas]
        assert all(len(x) == 1 for x in xs)  # each ran once on its share
        x = np.concatenate([x[0] for x in xs])
        count = x.shape[0] * x.shape[2] * x.shape[3]
        mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3)) * count / (count - 1)
        for name, stat in (("running_mean", mean), ("running_var", var)):
            expected = 0.9 * before[f"{path}.{name}"] + 0.1 * stat
            np.testing.assert_allclose(got[f"{path}.{name}"], expected, rtol=1e-12, atol=1e-15)
        assert got[f"{path}.num_batches_tracked"] == before[f"{path}.num_batches_tracked"] + 1
    # The first batch norm sees the images themselves: there the pooled statistics are
    # exactly one process's, and the mean of the workers' running variances is not.
    one = float64_model(cfg)
    one(*batch_at(data, 1, batch_size, SEED))
    first = f"{paths[0]}.running_var"
    np.testing.assert_allclose(got[first], dict(one.named_buffers())[first], rtol=1e-12)
    images = [len(part) for part in shares(batch_size, workers)]
    averaged = merge_buffers([dict(r.model.named_buffers()) for r in replicas], images)
    assert np.abs(averaged[first] - got[first]).max() > 1e-6 * np.abs(got[first]).max()


def test_weighting_by_images_alone_would_not_be_exact(data):
    # The reason for the per-loss factors: two workers whose shares sample different
    # numbers of RoIs, weighted 3/5 and 2/5, miss the one-process loss.
    cfg, batch_size = exact_config(), 5
    expected_losses, _ = one_process_step(cfg, data, batch_size)
    parts = shares(batch_size, 2)
    driver = float64_model(cfg)
    state = FlatLayout(driver).pack_state(driver)
    per_worker = [
        Replica(cfg, data, SEED, True, batch_size, "numpy", "float64").forward(state, 1, part)
        for part in parts
    ]
    pairs = zip(parts, per_worker, strict=True)
    by_images = sum(len(p) / batch_size * f[0]["loss_mask"] for p, f in pairs)
    counts = [f[1]["positive_rois"] for f in per_worker]
    assert counts[0] * len(parts[1]) != counts[1] * len(parts[0])
    assert abs(by_images - expected_losses["loss_mask"]) > 1e-9


# --- on a local Ray cluster ---------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    try:
        import ray
    except ImportError:
        print("tests/test_distributed.py: ray is not installed (pip install -e '.[distributed]')")
        pytest.skip("ray is not installed: pip install -e '.[distributed]'")
    # As RayWorkers starts its local cluster: workers at nice 0, not Ray's 15.
    before = os.environ.get("RAY_worker_niceness")
    with distributed._workers_at_normal_priority():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    assert os.environ.get("RAY_worker_niceness") == before  # only the cluster saw it
    # Workers unpickle this module's classes (the dataset below) by value: they cannot
    # import a test module.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


def test_two_ray_workers_make_the_one_process_step(ray_cluster, data):
    cfg, batch_size = exact_config(), 3
    expected = one_process_step(cfg, data, batch_size)
    model = float64_model(cfg)
    settings = TrainSettings(batch_size=batch_size, workers=2, seed=SEED)
    workers = RayWorkers(model, data, settings, "numpy")
    try:
        assert {where[2] for where in workers.where} == {
            os.path.dirname(sys.modules["tinymaskrcnn"].__file__)
        }
        # Ray's default nice 15 would let every other process preempt the workers.
        assert [os.getpriority(os.PRIO_PROCESS, w[1]) for w in workers.where] == [0, 0]
        optimizer = RecordingSGD(model)
        losses, _, times = workers.step(model, optimizer, 1, "nowhere")
    finally:
        workers.close()
    assert_same_step(losses, optimizer.grads, *expected)
    assert times.transfer > 0


def test_two_ray_workers_with_synchronised_batch_norm_make_the_one_process_step(ray_cluster, data):
    cfg, batch_size = exact_config(norm_layer="batch_norm"), 3
    expected = one_process_step(cfg, data, batch_size)
    model = float64_model(cfg)
    settings = TrainSettings(batch_size=batch_size, workers=2, seed=SEED)
    assert settings.sync_batch_norm  # the default
    workers = RayWorkers(model, data, settings, "numpy")
    try:
        assert workers.synchronised
        optimizer = RecordingSGD(model)
        losses, _, _ = workers.step(model, optimizer, 1, "nowhere")
    finally:
        workers.close()
    assert_same_step(losses, optimizer.grads, *expected)


class DiesAt:
    """A dataset whose image ``index`` kills the worker process that reads it."""

    def __init__(self, dataset, index):
        self.dataset, self.index, self.driver = dataset, index, os.getpid()

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        if i == self.index and os.getpid() != self.driver:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.dataset[i]


def test_a_killed_worker_fails_its_step_and_the_run_resumes_on_another_count(
    ray_cluster, tmp_path, data
):
    cfg = tiny_config(anchor_sizes=((4,), (8,), (16,), (32,), (64,)))
    settings = dict(steps=4, batch_size=2, lr=0.01, warmup_iters=0, seed=SEED, checkpoint_every=2)
    # Step 3 (0-based 2) reads positions 4 and 5 of epoch 0; worker 1 takes position 5.
    doomed = int(np.random.default_rng([SEED, 0]).permutation(len(data))[5])
    with pytest.raises(WorkerLost, match=r"worker 1 of 2 \(pid \d+ on .*\) died during step 3"):
        train(cfg, tmp_path, TrainSettings(**settings, workers=2), dataset=DiesAt(data, doomed),
              eval_dataset=False, backend="numpy", progress=False)  # fmt: skip
    assert load_training_state(tmp_path / CHECKPOINT)[2] == 2
    np.testing.assert_array_equal(read_log(tmp_path / LOG)["step"], [1, 2])

    result = train(None, tmp_path, TrainSettings(**settings, workers=1), resume=True,
                   dataset=data, eval_dataset=False, backend="numpy", progress=False)  # fmt: skip
    assert result.step == 4
    log = read_log(tmp_path / LOG)
    np.testing.assert_array_equal(log["step"], [1, 2, 3, 4])
    assert (log["transfer"][:2] > 0).all() and (log["transfer"][2:] == 0).all()


def test_a_worker_that_cannot_reach_another_says_how_to_train_without_the_links():
    listening = PeerSockets(0, 2, "127.0.0.1")
    address = listening.address
    listening.listener.close()  # nothing listens there any more
    with pytest.raises(
        PeerLost, match=r"worker 1 cannot reach worker 0 at 127\.0\.0\.1:\d+ .*--no-sync"
    ):
        PeerSockets(1, 2, "127.0.0.1", timeout=5).connect([address, None])
