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
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


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

    def update():
        total = layout.unpack_grads(*sum_gradients([grads] * args.workers))
        for n, p in trainable.items():
            p.grad = total[n]
        optimizer.step()
        optimizer.zero_grad()

    upd = timed(update)
    ray.shutdown()
    moved = state_bytes + args.workers * grad_bytes
    print(f"{args.workers} workers, median of {args.repeats}, load {os.getloadavg()[0]:.1f}:")
    print(f"  pack + ray.put of the state {put * 1e3:8.1f} ms")
    print(
        f"  weights out, gradients back {trip * 1e3:8.1f} ms "
        f"(driver side {moved / 1e6:.1f} MB: {moved / trip / 1e9:.2f} GB/s)"
    )
    print(f"  gradient sum + SGD step     {upd * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
