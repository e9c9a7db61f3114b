"""The state of a training run: its settings, its optimizer, and the checkpoint that
resumes it bit for bit (docs/architecture.md, Training).

A training checkpoint (``checkpoint.safetensors`` of a run folder, run_folder.py) holds:

    tensors    the model's state_dict under its own names, the optimizer's momentum
               buffers and iteration under ``optimizer.``
    metadata   config (the MaskRCNNConfig), class_names, step, settings (TrainSettings
               as JSON), rng
               (the state of the model's random generator, which the RPN and RoI
               samplers draw from)

Resuming is exact because nothing in a step depends on state outside the checkpoint:
the batch of a step is computed from the step number alone (train.py ``batch_at``), not
from an iterator's position. Checkpoints are written to a temporary file and renamed
(weights.py), so a Ctrl-C or a crash at any moment leaves the previous checkpoint whole.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import numpy as np

from . import nn
from .model import MaskRCNN
from .weights import (
    OPTIMIZER_PREFIX,
    class_names_of,
    fit_state_dict,
    load_checkpoint,
    save_checkpoint,
)


@dataclass
class TrainSettings:
    """How to train (the model's own hyper-parameters are in MaskRCNNConfig).

    Each field is also an option of ``tinymaskrcnn train`` (``--warmup-iters`` for
    warmup_iters), whose help is the line below.

    steps: optimizer steps in total (a resumed run continues up to this number)
    batch_size: images per step
    lr: SGD's learning rate after the warm-up (nn/optim.py)
    momentum: SGD's momentum
    weight_decay: SGD's L2 weight decay
    warmup_iters: steps of linear warm-up from lr / 1000
    milestones: steps at which the rate is multiplied by gamma; none given puts one at
        80% of steps, step 1 at the earliest (fixed when the run starts, so a resumed run keeps it)
    gamma: the factor of the rate at each milestone
    seed: seeds the initial weights, the samplers and the batches
    train_images: size of the shapes training set (when no dataset is passed)
    train_seed: seed of the shapes training set
    hflip: flip each image left to right with probability 0.5
    checkpoint_every: steps between checkpoints
    eval_every: steps between evaluations on the held-out set (0: only at the end,
        when eval_images > 0)
    eval_images: size of the held-out shapes set; 0 skips evaluation
    eval_seed: seed of the held-out shapes set
    workers: processes that share each step's batch (data parallelism on Ray, needs
        the [distributed] extra); 1 trains in this process. Any count resumes a run.
    sync_batch_norm: with workers > 1, batch norm normalises over the whole batch (the
        workers exchange each batch norm's per-channel statistics, as torch's
        SyncBatchNorm), so any worker count trains the one-process model; off, over each
        worker's share (torch's DistributedDataParallel alone), faster but lower held-out AP
    """

    steps: int = 3600
    batch_size: int = 4
    lr: float = 0.04
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 200
    milestones: tuple | None = None
    gamma: float = 0.1
    seed: int = 0
    train_images: int = 100_000
    train_seed: int = 1
    hflip: bool = True
    checkpoint_every: int = 100
    eval_every: int = 0
    eval_images: int = 200
    eval_seed: int = 12345
    workers: int = 1
    sync_batch_norm: bool = True

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every", "train_images", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        for name in ("warmup_iters", "eval_every", "eval_images", "seed", "train_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer; got {value!r}")
        if self.workers > self.batch_size:
            raise ValueError(
                f"workers ({self.workers}) must not exceed batch_size ({self.batch_size}): "
                "each worker takes at least one image of a step"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be positive; got {self.lr!r}")
        if self.milestones is None:
            self.milestones = (max(1, int(0.8 * self.steps)),)
        self.milestones = tuple(int(m) for m in self.milestones)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrainSettings:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**data)


def check_finite(losses, step, optimizer) -> float:
    """The sum of the five ``losses``, or FloatingPointError when it is not finite."""
    total = sum(losses.values())
    if not np.isfinite(total):
        raise FloatingPointError(
            f"training diverged at step {step}: losses {losses}; lower the "
            f"learning rate (now {optimizer.lr:g}) or lengthen the warm-up"
        )
    return total


def make_optimizer(model, settings: TrainSettings) -> nn.SGD:
    """SGD over ``model``'s parameters with the rate, momentum, decay and schedule of
    ``settings``."""
    return nn.SGD(
        model.named_parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        warmup_iters=settings.warmup_iters,
        milestones=settings.milestones,
        gamma=settings.gamma,
    )


def save_training_state(path, model, optimizer, step, settings) -> str:
    """Write everything a run needs to continue (the module docstring's list) into one
    safetensors file at ``path``, atomically; returns the path."""
    state = model.state_dict()
    for name, value in optimizer.state_dict().items():
        state[OPTIMIZER_PREFIX + name] = value
    metadata = {
        "step": str(int(step)),
        "settings": settings.to_json(),
        "rng": json.dumps(model.rng.bit_generator.state),
    }
    return save_checkpoint(path, state, model.cfg, metadata, model.class_names)


def load_training_state(path):
    """Rebuild (model in train mode, optimizer, step, settings) from a training checkpoint.

    Raises FileNotFoundError for a missing file and ValueError for a damaged one or for
    a weights-only file (which cannot resume: it has no optimizer state or step).
    """
    state, cfg, metadata = load_checkpoint(path)
    missing = [k for k in ("step", "settings", "rng") if k not in metadata]
    if cfg is None or missing:
        raise ValueError(
            f"checkpoint {os.fspath(path)!r} is not a training checkpoint (it lacks "
            f"{', '.join(missing) or 'the config'}); only checkpoint.safetensors of a run "
            "folder can resume"
        )
    settings = TrainSettings.from_json(metadata["settings"])
    names = class_names_of(metadata, cfg, path)
    model = MaskRCNN(cfg, rng=np.random.default_rng(settings.seed), class_names=names)
    fit_state_dict(model, state, path)
    rng = np.random.default_rng(0)  # a generator whose state the saved one replaces
    rng.bit_generator.state = json.loads(metadata["rng"])
    model.rng = rng
    optimizer = make_optimizer(model, settings)
    optimizer.load_state_dict(
        {k[len(OPTIMIZER_PREFIX) :]: v for k, v in state.items() if k.startswith(OPTIMIZER_PREFIX)}
    )
    return model.train(), optimizer, int(metadata["step"]), settings


def export_weights(source, out, half: bool = True) -> str:
    """Write the weights and config of ``source`` (a run's checkpoint or weights file) alone.

    half: store float32 arrays as float16, halving the file (the shapes model shipped
    in the package: 3.7 MB instead of 7.5). Loading casts them back to the model's
    float32; the rounding (relative 5e-4) moves its AP by less than 0.005.
    """
    model = MaskRCNN.from_checkpoint(source)
    state = model.state_dict()
    if half:
        state = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in state.items()}
    _, _, metadata = load_checkpoint(source)
    extra = {"source": os.path.basename(os.fspath(source))}
    if "step" in metadata:
        extra["step"] = metadata["step"]
    return save_checkpoint(out, state, model.cfg, extra, model.class_names)
