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

A run lives in one folder:

    checkpoint.safetensors   the latest full training state, written every
                             ``checkpoint_every`` steps and at the end
    model.safetensors        weights and config only (what ``MaskRCNN.from_checkpoint``,
                             ``tinymaskrcnn predict`` and ``evaluate`` read), at the end
    log.csv                  one row per step: lr, the five losses, their sum, seconds
    eval.csv                 COCO AP of the held-out set every ``eval_every`` steps

Resuming is exact because nothing in a step depends on state outside the checkpoint:
the checkpoint holds the parameters, the batch-norm statistics, the optimizer's
momentum buffers and iteration, the step, the training settings and the state of the
model's random generator (the RPN and RoI samplers draw from it); and the batch of a
step is computed from the step number alone (``batch_at``), not from an iterator's
position. Checkpoints are written to a temporary file and renamed (weights.py), so a
Ctrl-C or a crash at any moment leaves the previous checkpoint whole.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import time
from dataclasses import dataclass

import numpy as np

from . import nn
from .atomic_file import write_atomically
from .config import MaskRCNNConfig
from .data.batching import flip_horizontal
from .kernels import available_backends, use_backend
from .model import LOSS_NAMES, MaskRCNN
from .weights import OPTIMIZER_PREFIX, load_checkpoint, model_weights, save_checkpoint

CHECKPOINT = "checkpoint.safetensors"
WEIGHTS = "model.safetensors"
LOG = "log.csv"
EVAL_LOG = "eval.csv"
# Short names for the progress bar, in LOSS_NAMES order.
_SHORT = {
    "loss_objectness": "obj",
    "loss_rpn_box_reg": "rpn_box",
    "loss_classifier": "cls",
    "loss_box_reg": "box",
    "loss_mask": "mask",
}


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
        80% of steps (fixed when the run starts, so a resumed run keeps it)
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

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every", "train_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        for name in ("warmup_iters", "eval_every", "eval_images", "seed", "train_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer; got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive; got {self.lr!r}")
        if self.milestones is None:
            self.milestones = (int(0.8 * self.steps),)
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
    sequence. Epoch e visits ``dataset`` in the order of
    ``np.random.default_rng([seed, e]).permutation(len(dataset))`` and flips the image at
    each position with probability 0.5 (the same generator, after the permutation).
    A pure function of its arguments, so resuming needs no iterator state.

    images: B arrays (3, H, W) float32 in [0, 1]; targets: B dicts with boxes (G, 4),
    labels (G,), masks (G, H, W), as the dataset gives them (mirrored when flipped).
    """
    n = len(dataset)
    images, targets = [], []
    epochs = {}
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, k = divmod(position, n)
        if epoch not in epochs:
            rng = np.random.default_rng([seed, epoch])
            epochs[epoch] = (rng.permutation(n), rng.random(n) < 0.5)
        order, flips = epochs[epoch]
        image, target = dataset[int(order[k])]
        if hflip and flips[k]:
            image, target = flip_horizontal(image, target)
        images.append(image)
        targets.append(target)
    return images, targets


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


# --- checkpoints ------------------------------------------------------------------------


def make_optimizer(model, settings: TrainSettings) -> nn.SGD:
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
    """Write everything a run needs to continue into one safetensors file, atomically.

    Tensors: the model's state_dict under its own names and the optimizer's state under
    ``optimizer.``; metadata: config, ``step``, ``settings`` and ``rng`` (the model
    generator's bit-generator state, JSON).
    """
    state = model.state_dict()
    for name, value in optimizer.state_dict().items():
        state[OPTIMIZER_PREFIX + name] = value
    metadata = {
        "step": str(int(step)),
        "settings": settings.to_json(),
        "rng": json.dumps(model.rng.bit_generator.state),
    }
    return save_checkpoint(path, state, model.cfg, metadata)


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
    model = MaskRCNN(cfg, rng=np.random.default_rng(settings.seed))
    weights = model_weights(state)
    model.load_state_dict(weights)
    rng = np.random.default_rng()
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
    return save_checkpoint(out, state, model.cfg, extra)


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
) -> TrainResult:
    """Train a Mask R-CNN into the run folder ``out_dir`` (see the module docstring).

    cfg: the model (ignored when resuming: the checkpoint's config is used).
    settings: TrainSettings. When resuming, only ``steps`` (and the checkpoint and
        evaluation cadence) is taken from it: the rest continues from the checkpoint.
    resume: continue from ``out_dir/checkpoint.safetensors``.
    dataset, eval_dataset: ``ds[i] -> (image, target)``; default: shapes sets of
        ``settings`` (``shapes_sets``). Pass ``eval_dataset=False`` to skip evaluation.
    backend: "numpy", "numba" or "cuda"; default ``default_backend()``.
    progress: show a tqdm bar with the five losses.

    Ctrl-C stops between or inside a step; the step in progress is abandoned and the
    last checkpoint on disk is left as it was (``interrupted`` is True).
    """
    out_dir = os.fspath(out_dir)
    settings = TrainSettings() if settings is None else settings
    checkpoint = os.path.join(out_dir, CHECKPOINT)
    if resume:
        model, optimizer, start, saved = load_training_state(checkpoint)
        settings = dataclasses.replace(
            saved,
            steps=settings.steps,
            checkpoint_every=settings.checkpoint_every,
            eval_every=settings.eval_every,
        )
    else:
        if cfg is None:
            raise ValueError("cfg must be a MaskRCNNConfig when not resuming")
        if os.path.exists(checkpoint):
            raise ValueError(
                f"{out_dir!r} already holds a run ({CHECKPOINT}); pass resume=True "
                "(--resume) to continue it or choose another folder"
            )
        os.makedirs(out_dir, exist_ok=True)
        model = MaskRCNN(cfg, rng=np.random.default_rng(settings.seed)).train()
        optimizer = make_optimizer(model, settings)
        start = 0
    if dataset is None or eval_dataset is None:
        default_train, default_eval = shapes_sets(settings, image_size=model.cfg.min_size)
        dataset = default_train if dataset is None else dataset
        eval_dataset = default_eval if eval_dataset is None else eval_dataset
    eval_dataset = eval_dataset or None
    backend = default_backend() if backend is None else backend

    log = _Log(os.path.join(out_dir, LOG), ["step", "lr", *LOSS_NAMES, "loss", "seconds"], start)
    eval_log = _Log(os.path.join(out_dir, EVAL_LOG), _EVAL_COLUMNS, start)
    bar = _progress(progress, start, settings.steps)
    step, interrupted, metrics, seconds = start, False, None, 0.0
    try:
        with use_backend(backend):
            while step < settings.steps:
                tic = time.perf_counter()
                images, targets = batch_at(
                    dataset, step, settings.batch_size, settings.seed, settings.hflip
                )
                lr = optimizer.lr
                losses = model(images, targets)
                total = sum(losses.values())
                if not np.isfinite(total):
                    raise FloatingPointError(
                        f"training diverged at step {step}: losses {losses}; lower the "
                        f"learning rate (now {lr:g}) or lengthen the warm-up"
                    )
                model.backward()
                optimizer.step()
                optimizer.zero_grad()
                step += 1
                took = time.perf_counter() - tic
                seconds += took
                log.write(
                    [
                        step,
                        f"{lr:.6g}",
                        *(f"{losses[k]:.6f}" for k in LOSS_NAMES),
                        f"{total:.6f}",
                        f"{took:.3f}",
                    ]
                )
                if bar is not None:
                    bar.set_postfix({_SHORT[k]: f"{losses[k]:.3f}" for k in LOSS_NAMES})
                    bar.update(1)
                if step % settings.checkpoint_every == 0 or step == settings.steps:
                    save_training_state(checkpoint, model, optimizer, step, settings)
                evaluate_now = settings.eval_every and step % settings.eval_every == 0
                if eval_dataset is not None and (evaluate_now or step == settings.steps):
                    metrics = evaluate_model(model, eval_dataset)
                    eval_log.write(_eval_row(step, metrics))
                    model.train()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
        log.close()
        eval_log.close()
    if not interrupted:
        model.save(os.path.join(out_dir, WEIGHTS), {"step": str(step)})
    return TrainResult(model, step, interrupted, metrics, seconds)


def evaluate_model(model, dataset, batch_size=8, iou_types=("bbox", "segm")):
    """COCO AP of ``model`` on ``dataset`` (evaluate.evaluate's dict); leaves it in eval mode."""
    from .evaluate import evaluate

    model.eval()
    predictions = []
    for start in range(0, len(dataset), batch_size):
        images = [dataset[i][0] for i in range(start, min(start + batch_size, len(dataset)))]
        predictions.extend(model(images))
    return evaluate(predictions, dataset, iou_types=iou_types)


_EVAL_COLUMNS = [
    "step",
    *(f"{t}_{m}" for t in ("bbox", "segm") for m in ("AP", "AP50", "AP75")),
]


def _eval_row(step, metrics):
    row = [step]
    for column in _EVAL_COLUMNS[1:]:
        iou_type, name = column.split("_")
        value = metrics.get(iou_type, {}).get(name)
        row.append("" if value is None else f"{value:.4f}")
    return row


class _Log:
    """A CSV file with a header, appended row by row and flushed, so that it survives a
    Ctrl-C. Opening it for a resumed run first drops the rows after ``start`` (written
    after the checkpoint the run resumes from), so the log never holds a step twice."""

    def __init__(self, path, columns, start):
        kept = []
        if start and os.path.exists(path):
            with open(path, newline="") as f:
                kept = [row for row in csv.reader(f)][1:]
            kept = [row for row in kept if row and int(row[0]) <= start]
        text = io.StringIO(newline="")
        csv.writer(text).writerows([columns, *kept])
        write_atomically(path, lambda f: f.write(text.getvalue().encode("utf-8")))
        self._file = open(path, "a", newline="")
        self._writer = csv.writer(self._file)

    def write(self, row):
        self._writer.writerow(row)
        self._file.flush()

    def close(self):
        self._file.close()


def _progress(enabled, start, total):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)


def read_log(path) -> dict[str, np.ndarray]:
    """A run's log.csv (or eval.csv) as column name -> float array (empty cells NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{os.fspath(path)!r} is empty: no header row")
    header, body = rows[0], rows[1:]
    return {
        name: np.array([float(r[i]) if r[i] != "" else np.nan for r in body], dtype=np.float64)
        for i, name in enumerate(header)
    }
