"""Training: SGD over batches, checkpoints that resume bit for bit, a CSV log
(docs/architecture.md, Training).

The recipe is torchvision's detection recipe (Mask R-CNN §3.1): SGD with momentum 0.9
and weight decay 1e-4, a linear warm-up, then the learning rate divided by 10 at each
milestone; horizontal flips as the one augmentation. One step:

    images, targets = batch_at(dataset, step, ...)   # a pure function of the step
    losses = model(images, targets)                  # the five losses
    model.backward(); optimizer.step(); optimizer.zero_grad()

Shapes used below:
    B: images per batch       H, W: one image's size        G: objects of one image

With ``settings.workers`` > 1 (or a Ray ``address``) the same step runs data-parallel,
the batch shared by worker processes (distributed.py); the loop, its logs and its
checkpoints are the same.

This module is the loop and its data; around it, train_state.py holds what a run is
(``TrainSettings``, the optimizer) and the checkpoint that resumes it exactly, and
run_folder.py the files of the run folder ``train`` writes (checkpoint, weights,
log.csv, eval.csv). Their public names are importable from here too.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

import numpy as np

from .config import MaskRCNNConfig
from .data.batching import examples_at
from .kernels import available_backends, use_backend
from .model import LOSS_NAMES, MaskRCNN
from .run_folder import (  # noqa: F401 (read_log, StepTime re-exported)
    CHECKPOINT,
    EVAL_LOG,
    LOG,
    WEIGHTS,
    RunLogs,
    StepTime,
    read_log,
)
from .train_state import (  # noqa: F401 (export_weights re-exported)
    TrainSettings,
    check_finite,
    export_weights,
    load_training_state,
    make_optimizer,
    save_training_state,
)
from .weights import fit_class_names

# Short names for the progress bar, in LOSS_NAMES order.
_SHORT = {
    "loss_objectness": "obj",
    "loss_rpn_box_reg": "rpn_box",
    "loss_classifier": "cls",
    "loss_box_reg": "box",
    "loss_mask": "mask",
}


def default_backend() -> str:
    """The fastest backend that runs the whole training step here.

    Numba CPU: its im2col/col2im and RoI kernels make a step of the shapes model about
    8x faster than the NumPy reference. CUDA is not chosen by itself: only some ops
    have CUDA kernels yet, and copying every feature map to the GPU and back for
    those costs more than they save.
    """
    return "numba" if "numba" in available_backends() else "numpy"


# --- data -----------------------------------------------------------------------------


def batch_at(dataset, step, batch_size, seed, hflip=True):
    """The batch of training step ``step``: (images, targets), lists of length B.

    Epochs are laid end to end: step s takes positions s*B .. s*B + B - 1 of that
    sequence (``data.batching.examples_at``). A pure function of its arguments, so
    resuming needs no iterator state, and data-parallel workers each build their own
    share of it.

    images: B arrays (3, H, W) float32 in [0, 1]; targets: B dicts with boxes (G, 4),
    labels (G,), masks (G, H, W), as the dataset gives them (mirrored when flipped).
    """
    return examples_at(dataset, range(step * batch_size, (step + 1) * batch_size), seed, hflip)


def shapes_sets(settings: TrainSettings, image_size=128):
    """(training set, held-out set or None) of synthetic shapes, disjoint by seed."""
    from .data.shapes import ShapesDataset

    if settings.train_seed == settings.eval_seed:
        raise ValueError(
            f"train_seed and eval_seed must differ so that the held-out images are unseen; "
            f"both are {settings.train_seed}"
        )
    train_set = ShapesDataset(
        settings.train_images, image_size=image_size, seed=settings.train_seed
    )
    held_out = (
        ShapesDataset(settings.eval_images, image_size=image_size, seed=settings.eval_seed)
        if settings.eval_images
        else None
    )
    return train_set, held_out


# --- the loop ---------------------------------------------------------------------------


@dataclass
class TrainResult:
    model: MaskRCNN
    step: int  # steps completed
    interrupted: bool
    metrics: dict | None  # the last evaluation (evaluate.evaluate's output) or None
    seconds: float  # training time of this call, evaluation excluded


def train(
    cfg: MaskRCNNConfig | None,
    out_dir,
    settings: TrainSettings | None = None,
    resume: bool = False,
    dataset=None,
    eval_dataset=None,
    backend: str | None = None,
    progress: bool = True,
    address: str | None = None,
) -> TrainResult:
    """Train a Mask R-CNN into the run folder ``out_dir`` (run_folder.py).

    cfg: the model (ignored when resuming: the checkpoint's config is used).
    settings: TrainSettings. When resuming, only ``steps``, ``workers`` (and the
        checkpoint and evaluation cadence) are taken from it: the rest continues from
        the checkpoint.
    resume: continue from ``out_dir/checkpoint.safetensors``.
    dataset, eval_dataset: ``ds[i] -> (image, target)``; default: shapes sets of
        ``settings`` (``shapes_sets``). Pass ``eval_dataset=False`` to skip evaluation.
    backend: "numpy", "numba" or "cuda"; default ``default_backend()``.
    progress: show a tqdm bar with the five losses.
    address: a Ray cluster to train on (``ray start --head`` prints it; "auto" finds
        the local one). None with ``settings.workers`` > 1 starts a local cluster;
        None with one worker trains in this process (distributed.py).

    Ctrl-C stops between or inside a step; the step in progress is abandoned and the
    last checkpoint on disk is left as it was (``interrupted`` is True).
    """
    out_dir = os.fspath(out_dir)
    settings = TrainSettings() if settings is None else settings
    model, optimizer, start, settings = _open_run(cfg, out_dir, settings, resume)
    dataset, eval_dataset = _datasets(dataset, eval_dataset, settings, model.cfg.min_size)
    if hasattr(dataset, "CLASSES"):  # the checkpoints name the labels as the dataset does
        model.class_names = fit_class_names(dataset.CLASSES, model.cfg.num_classes, "the dataset")
    backend = default_backend() if backend is None else backend

    checkpoint = os.path.join(out_dir, CHECKPOINT)
    logs = RunLogs(out_dir, start)
    bar = _progress(progress, start, settings.steps)
    step, interrupted, metrics, seconds = start, False, None, 0.0
    workers = None
    try:
        if settings.workers > 1 or address is not None:
            from .distributed import RayWorkers

            workers = RayWorkers(model, dataset, settings, backend, address)
        with use_backend(backend):
            while step < settings.steps:
                tic = time.perf_counter()
                lr = optimizer.lr
                if workers is None:
                    losses, total, times = _step(model, optimizer, dataset, settings, step)
                else:
                    losses, total, times = workers.step(model, optimizer, step, checkpoint)
                step += 1
                took = time.perf_counter() - tic
                seconds += took
                logs.write_step(step, lr, losses, total, took, times)
                if bar is not None:
                    bar.set_postfix({_SHORT[k]: f"{losses[k]:.3f}" for k in LOSS_NAMES})
                    bar.update(1)
                if step % settings.checkpoint_every == 0 or step == settings.steps:
                    save_training_state(checkpoint, model, optimizer, step, settings)
                evaluate_now = settings.eval_every and step % settings.eval_every == 0
                if eval_dataset is not None and (evaluate_now or step == settings.steps):
                    metrics = evaluate_model(model, eval_dataset)
                    logs.write_eval(step, metrics)
                    model.train()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if workers is not None:
            workers.close()
        if bar is not None:
            bar.close()
        logs.close()
    if not interrupted:
        model.save(os.path.join(out_dir, WEIGHTS), {"step": str(step)})
    return TrainResult(model, step, interrupted, metrics, seconds)


def _open_run(cfg, out_dir, settings, resume):
    """(model in train mode, optimizer, steps done, settings) of a new or resumed run."""
    checkpoint = os.path.join(out_dir, CHECKPOINT)
    if resume:
        model, optimizer, start, saved = load_training_state(checkpoint)
        # Nothing in a checkpoint depends on the worker count, so a run resumes on any.
        settings = dataclasses.replace(
            saved,
            steps=settings.steps,
            checkpoint_every=settings.checkpoint_every,
            eval_every=settings.eval_every,
            workers=settings.workers,
            sync_batch_norm=settings.sync_batch_norm,
        )
        return model, optimizer, start, settings
    if cfg is None:
        raise ValueError("cfg must be a MaskRCNNConfig when not resuming")
    if os.path.exists(checkpoint):
        raise ValueError(
            f"{out_dir!r} already holds a run ({CHECKPOINT}); pass resume=True "
            "(--resume) to continue it or choose another folder"
        )
    os.makedirs(out_dir, exist_ok=True)
    model = MaskRCNN(cfg, rng=np.random.default_rng(settings.seed)).train()
    return model, make_optimizer(model, settings), 0, settings


def _datasets(dataset, eval_dataset, settings, image_size):
    """(training set, held-out set or None): those given, else ``shapes_sets``'."""
    if dataset is None or eval_dataset is None:
        default_train, default_eval = shapes_sets(settings, image_size=image_size)
        dataset = default_train if dataset is None else dataset
        eval_dataset = default_eval if eval_dataset is None else eval_dataset
    return dataset, eval_dataset or None


def _step(model, optimizer, dataset, settings, step):
    """One optimizer step on the batch of ``step``, in this process; returns (losses,
    their sum, StepTime)."""
    tic = time.perf_counter()
    images, targets = batch_at(dataset, step, settings.batch_size, settings.seed, settings.hflip)
    losses = model(images, targets)
    total = check_finite(losses, step, optimizer)
    model.backward()
    computed = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad()
    return losses, total, StepTime(computed - tic, 0.0, time.perf_counter() - computed)


def evaluate_model(model, dataset, batch_size=8, iou_types=("bbox", "segm")):
    """COCO AP of ``model`` on ``dataset`` (evaluate.evaluate's dict); leaves it in eval mode."""
    from .evaluate import evaluate

    model.eval()
    predictions = []
    for start in range(0, len(dataset), batch_size):
        images = [dataset[i][0] for i in range(start, min(start + batch_size, len(dataset)))]
        predictions.extend(model(images))
    return evaluate(predictions, dataset, iou_types=iou_types)


def _progress(enabled, start, total):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
