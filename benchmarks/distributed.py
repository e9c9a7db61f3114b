"""What a data-parallel step costs besides compute (distributed.py): the bytes it moves
and how fast Ray moves them here, for the step-time model of README's "Training on many
cores or machines".

    python benchmarks/distributed.py [--workers 2] [--repeats 7]

Prints the parameter count and the bytes of the state (what the driver broadcasts: one
flat vector, ``distributed.FlatLayout``) and of one set of gradients (what each worker
sends back, one vector too); then, on a local Ray cluster of --workers actors that hold
nothing but a gradient vector, the median seconds of (a) packing and ray.put of the
state, (b) the same round trip a step makes, weights out to every
worker and gradients back, and (c) the driver's sum of the gradients and SGD step on
the shapes model. No model runs on the workers, so (b) is transport alone.

Then the alternative the step could take instead of the driver's round trip (issue: "or
an equivalent all-reduce among actors -- measure which is faster here"): (d) a ring
all-reduce of the workers' gradient vectors over TCP links between the actors
themselves, after which each worker would take the SGD step on its own replica
(in parallel, (e) each). Per step the driver's way costs (b) + (c) of serial time, the
all-reduce's (d) + (e). A ring sends each worker's 2 (N - 1) / N of a vector, whatever N,
where the driver's link carries N + 1 vectors.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import threading
import time

import numpy as np


def _swap(out_link, send, in_link, receive) -> None:
    """Send the array ``send`` on ``out_link`` while receiving ``receive``'s bytes (a
    contiguous array, filled in place) from ``in_link``: a thread sends, so that two
    workers sending each other more than a socket buffer holds never both wait."""
    sender = threading.Thread(target=out_link.sendall, args=(memoryview(send).cast("B"),))
    sender.start()
    view, got = memoryview(receive).cast("B"), 0
    while got < len(view):
        n = in_link.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("a ring neighbour closed its link")
        got += n
    sender.join()


def ring_all_reduce(vector, rank: int, count: int, out_link, in_link):
    """Sum ``vector`` (P,) over the ``count`` workers of a ring, in place; returns it.

    The vector is cut into ``count`` chunks. Reduce-scatter: in step s worker r sends
    chunk r - s to its right neighbour and adds the chunk r - s - 1 it receives from its
    left, so after count - 1 steps it holds the whole sum of chunk r + 1. All-gather: the
    summed chunks travel round the ring the same way, count - 1 steps more.
    """
    bounds = np.linspace(0, len(vector), count + 1).astype(int)

    def chunk(i):
        i %= count
        return vector[bounds[i] : bounds[i + 1]]

    for s in range(count - 1):
        incoming = np.empty_like(chunk(rank - s - 1))
        _swap(out_link, chunk(rank - s), in_link, incoming)
        chunk(rank - s - 1)[:] += incoming
    for s in range(count - 1):
        _swap(out_link, chunk(rank + 1 - s), in_link, chunk(rank - s))
    return vector


class RingMember:
    """A worker holding a gradient vector, linked to its ring neighbours by TCP."""

    def __init__(self, grads, rank: int, count: int):
        self.grads, self.rank, self.count = grads, rank, count
        self.listener = socket.create_server(("127.0.0.1", 0))

    def port(self) -> int:
        return self.listener.getsockname()[1]

    def link(self, ports) -> None:
        # Connect to the right neighbour, then accept the left one: the kernel completes
        # a connection before accept, so no order of arrival waits forever.
        right = ports[(self.rank + 1) % self.count]
        self.out_link = socket.create_connection(("127.0.0.1", right))
        self.in_link, _ = self.listener.accept()
        for link in (self.out_link, self.in_link):
            link.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def all_reduce(self) -> None:
        total = self.grads.copy()  # a step's gradients are fresh each step
        self.total = ring_all_reduce(total, self.rank, self.count, self.out_link, self.in_link)

    def result(self):
        return self.total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    import ray

    from tinymaskrcnn import MaskRCNN, MaskRCNNConfig
    from tinymaskrcnn.distributed import FlatLayout, sum_gradients
    from tinymaskrcnn.train_state import TrainSettings, make_optimizer

    model = MaskRCNN(MaskRCNNConfig.shapes()).train()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for p in trainable.values():
        p.grad = np.ones_like(p.data)
    # What distributed.py sends: one flat vector of the state, one of the gradients.
    layout = FlatLayout(model)
    state = layout.pack_state(model)
    grads = layout.pack_grads(model)
    model.zero_grad()
    state_bytes = state[0].nbytes + sum(v.nbytes for v in state[1].values())
    grad_bytes = grads[0].nbytes
    count = sum(p.data.size for p in trainable.values())
    print(f"shapes model: {count} trainable parameters")
    print(f"state {state_bytes / 1e6:.2f} MB, gradients {grad_bytes / 1e6:.2f} MB")

    ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="ERROR")

    @ray.remote(num_cpus=1)
    class Echo:
        def __init__(self, grads):
            self.grads = grads

        def step(self, state):
            return self.grads  # what a worker's backward returns

    Ring = ray.remote(num_cpus=1)(RingMember)
    workers = [Echo.remote(grads) for _ in range(args.workers)]
    ray.get([w.step.remote(None) for w in workers])  # started

    def timed(fn):
        times = []
        for _ in range(args.repeats):
            tic = time.perf_counter()
            fn()
            times.append(time.perf_counter() - tic)
        return statistics.median(times)

    put = timed(lambda: ray.put(layout.pack_state(model)))

    def round_trip():
        ref = ray.put(layout.pack_state(model))
        results = ray.get([w.step.remote(ref) for w in workers])
        return layout.unpack_grads(*sum_gradients(results))

    trip = timed(round_trip)
    optimizer = make_optimizer(model, TrainSettings())

    def sgd_step(grads_by_name):
        for n, p in trainable.items():
            p.grad = grads_by_name[n]
        optimizer.step()
        optimizer.zero_grad()

    # (c) the driver sums the workers' gradients, then steps; (e) a worker holding the
    # all-reduced gradients only steps.
    upd = timed(lambda: sgd_step(layout.unpack_grads(*sum_gradients([grads] * args.workers))))
    one_set = layout.unpack_grads(*grads)
    sgd = timed(lambda: sgd_step(one_set))

    for worker in workers:  # the cluster has a CPU for each worker: free them for the ring
        ray.kill(worker)
    ring = [Ring.remote(grads[0], rank, args.workers) for rank in range(args.workers)]
    ports = ray.get([member.port.remote() for member in ring])
    ray.get([member.link.remote(ports) for member in ring])
    ray.get([member.all_reduce.remote() for member in ring])
    summed = ray.get([member.result.remote() for member in ring])
    expected = grads[0] * args.workers
    for total in summed:  # every worker holds the same sum
        np.testing.assert_allclose(total, expected, rtol=1e-6)
        np.testing.assert_array_equal(total, summed[0])
    reduce = timed(lambda: ray.get([member.all_reduce.remote() for member in ring]))
    ray.shutdown()
    moved = state_bytes + args.workers * grad_bytes
    print(f"{args.workers} workers, median of {args.repeats}, load {os.getloadavg()[0]:.1f}:")
    print(f"  pack + ray.put of the state {put * 1e3:8.1f} ms")
    print(
        f"  weights out, gradients back {trip * 1e3:8.1f} ms "
        f"(driver side {moved / 1e6:.1f} MB: {moved / trip / 1e9:.2f} GB/s)"
    )
    print(f"  gradient sum + SGD step     {upd * 1e3:8.1f} ms")
    ring_bytes = 2 * (args.workers - 1) / args.workers * grad_bytes
    print(
        f"  ring all-reduce             {reduce * 1e3:8.1f} ms "
        f"(each worker sends {ring_bytes / 1e6:.1f} MB)"
    )
    print(f"  SGD step alone              {sgd * 1e3:8.1f} ms")
    print(
        f"  serial time a step: driver {(trip + upd) * 1e3:.1f} ms, "
        f"all-reduce {(reduce + sgd) * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
