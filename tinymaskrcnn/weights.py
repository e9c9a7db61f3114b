"""Checkpoints: safetensors files with the config inside, and torchvision's names.

A checkpoint is a safetensors file (no pickle: loading one cannot run code) holding
every parameter and buffer under torchvision's ``state_dict`` names, plus metadata:
``config`` (the MaskRCNNConfig as JSON), ``class_names`` (a JSON list, one name per
label, index 0 the background) and ``format`` (this module's version). The names are
what ``predict`` and the tour draw: COCO's 91 for converted torchvision weights
(``COCO_NAMES``, torchvision's list with its "N/A" gaps), the dataset's for a trained
model; a checkpoint without them gets ``class 0``, ``class 1``, ...
Files are written to a temporary file in the same folder and renamed, so a crash
never leaves a half-written checkpoint under the real name.

torchvision renamed some keys when it moved to ``Conv2dNormActivation`` blocks; both
generations load here (``KEY_RENAMES``, applied by every ``load_state_dict``), and
``state_dict`` always uses the new one:

    backbone.fpn.inner_blocks.0.weight    <->  backbone.fpn.inner_blocks.0.0.weight
    backbone.fpn.layer_blocks.0.weight    <->  backbone.fpn.layer_blocks.0.0.weight
    rpn.head.conv.weight                  <->  rpn.head.conv.0.0.weight
    roi_heads.mask_head.mask_fcn1.weight  <->  roi_heads.mask_head.0.0.weight

``convert_torchvision(in.pth, out.safetensors)`` turns a torchvision ``.pth`` file into
a checkpoint (it needs torch, which the rest of the package never imports). The other
way, ``export_torchvision(checkpoint, out)`` writes a state_dict that
``torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
**torchvision_kwargs(cfg))`` loads with ``strict=True`` (README, Moving to torchvision).
"""

from __future__ import annotations

import json
import os

import numpy as np

from .atomic_file import write_atomically
from .nn.module import KEY_RENAMES, new_key, upgrade_state_dict  # noqa: F401 (re-exported)

FORMAT = "tinymaskrcnn-1"
CLASS_NAMES_KEY = "class_names"

# torchvision's COCO category names (its detection weights' meta["categories"]), indexed by
# label: "__background__" at 0 and "N/A" for the ids COCO left unused.
with open(os.path.join(os.path.dirname(__file__), "pretrained", "coco_names.txt")) as _f:
    COCO_NAMES = tuple(_f.read().splitlines())

# What training checkpoints store besides the model: the optimizer's state, under this.
OPTIMIZER_PREFIX = "optimizer."


def model_weights(state: dict) -> dict:
    """A checkpoint's state without the optimizer's entries (a training checkpoint's)."""
    return {k: v for k, v in state.items() if not k.startswith(OPTIMIZER_PREFIX)}


def compare_state_dicts(expected: dict, given: dict) -> dict[str, list[str]]:
    """Which names are missing, unexpected or mis-shaped.

    expected, given: name -> array (or anything with .shape). Returns a dict with the
    lists ``missing``, ``unexpected`` and ``misshaped`` ("name: expected (..), got (..)").
    """
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    misshaped = [
        f"{k}: expected {tuple(np.shape(expected[k]))}, got {tuple(np.shape(given[k]))}"
        for k in sorted(set(expected) & set(given))
        if tuple(np.shape(expected[k])) != tuple(np.shape(given[k]))
    ]
    return {"missing": missing, "unexpected": unexpected, "misshaped": misshaped}


def describe_differences(diff: dict[str, list[str]], limit: int = 8) -> str:
    """One line per non-empty list of ``compare_state_dicts``, at most ``limit`` names each."""
    lines = []
    for kind in ("missing", "unexpected", "misshaped"):
        names = diff.get(kind, [])
        if names:
            more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
            lines.append(f"{kind} ({len(names)}): {', '.join(names[:limit])}{more}")
    return "; ".join(lines)


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """``("background", "class 1", ...)``: the names of a model nobody named."""
    return ("background",) + tuple(f"class {k}" for k in range(1, num_classes))


def check_class_names(names, num_classes: int, where: str = "class_names") -> tuple[str, ...]:
    """``names`` as a tuple of ``num_classes`` strings (index 0 the background), or a
    ValueError naming ``where``; None gives ``default_class_names``."""
    if names is None:
        return default_class_names(num_classes)
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{where} must be a list of strings, one per label; got {names!r}")
    names = tuple(names)
    if len(names) != num_classes:
        raise ValueError(
            f"{where} holds {len(names)} class names but the model has num_classes="
            f"{num_classes} (background included): give one name per label"
        )
    return names


def fit_class_names(names, num_classes: int, where: str) -> tuple[str, ...]:
    """A dataset's names (``CLASSES``: index = label) for a model of ``num_classes``:
    padded with ``class k`` when the model has labels the dataset does not use; a
    ValueError when the dataset has more labels than the model."""
    names = tuple(names)
    if len(names) > num_classes:
        raise ValueError(
            f"{where} has labels up to {len(names) - 1} but the model has num_classes="
            f"{num_classes}: set num_classes={len(names)} (e.g. --set num_classes={len(names)})"
        )
    return names + default_class_names(num_classes)[len(names) :]


def class_names_of(metadata: dict, config, path) -> tuple[str, ...]:
    """The class names stored in a checkpoint's metadata, checked against its config
    (``default_class_names`` when it stores none)."""
    num_classes = 0 if config is None else config.num_classes
    if CLASS_NAMES_KEY not in metadata:
        return default_class_names(num_classes)
    where = f"checkpoint {os.fspath(path)!r}"
    try:
        names = json.loads(metadata[CLASS_NAMES_KEY])
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: its class_names do not parse as JSON: {err}") from None
    if config is None:
        return check_class_names(names, len(names), f"{where}: class_names")
    return check_class_names(names, num_classes, f"{where}: class_names")


# --- files ------------------------------------------------------------------------------


def save_checkpoint(
    path, state: dict, config=None, metadata: dict | None = None, class_names=None
) -> str:
    """Write ``state`` (name -> ndarray) and the config to a safetensors file, atomically.

    config: a MaskRCNNConfig (stored as JSON under the metadata key "config") or None.
    metadata: extra str -> str entries (e.g. training step).
    class_names: one name per label (``config.num_classes`` of them), or None.
    Returns the path.
    """
    from safetensors.numpy import save

    meta = {"format": FORMAT}
    if config is not None:
        meta["config"] = config.to_json()
    if class_names is not None:
        count = len(class_names) if config is None else config.num_classes
        meta[CLASS_NAMES_KEY] = json.dumps(list(check_class_names(class_names, count)))
    for key, value in (metadata or {}).items():
        meta[str(key)] = value if isinstance(value, str) else json.dumps(value)
    tensors = {}
    for name, value in state.items():
        array = np.asarray(value)
        if array.dtype == object or not (
            np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
        ):
            raise ValueError(f"state[{name!r}] must be a numeric array; got dtype {array.dtype}")
        # np.ascontiguousarray would turn a 0-d counter into shape (1,)
        tensors[name] = np.array(array, order="C", copy=True)
    data = save(tensors, metadata=meta)
    return write_atomically(path, lambda f: f.write(data))


def load_checkpoint(path):
    """Read a checkpoint: (state dict in current key names, MaskRCNNConfig or None, metadata).

    Raises FileNotFoundError for a missing file, IsADirectoryError for a folder, and
    ValueError, naming the path, for a file that is truncated (how many bytes its header
    describes and how many there are), corrupted or not a safetensors file, for a config
    that does not parse, for class names that do not number its config's classes, and for
    a tensor holding NaN or infinity.
    """
    from safetensors.numpy import load

    from .config import MaskRCNNConfig

    path = os.fspath(path)
    if os.path.isdir(path):
        inside = [
            n
            for n in ("model.safetensors", "checkpoint.safetensors")
            if os.path.isfile(os.path.join(path, n))
        ]
        hint = f"; did you mean {os.path.join(path, inside[0])!r}?" if inside else ""
        raise IsADirectoryError(f"checkpoint {path!r} is a folder, not a safetensors file{hint}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    with open(path, "rb") as f:
        data = f.read()
    try:
        metadata = _read_metadata(data)
        state = load(data)
    except Exception as err:  # safetensors raises its own error types for bad bytes
        raise ValueError(
            f"checkpoint {path!r} is truncated, corrupted or not a safetensors file "
            f"({len(data)} bytes): {err}"
        ) from None
    for name, array in state.items():
        # A diverged run's weights would give NaN detections without a word.
        if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
            raise ValueError(f"checkpoint {path!r}: tensor {name!r} holds NaN or infinity")
    config = None
    if "config" in metadata:
        try:
            config = MaskRCNNConfig.from_json(metadata["config"])
        except ValueError as err:
            raise ValueError(f"checkpoint {path!r} holds an invalid config: {err}") from None
    class_names_of(metadata, config, path)  # a count that disagrees is an error here
    return upgrade_state_dict(state), config, metadata


def _read_metadata(data: bytes) -> dict:
    # The safetensors header: 8-byte little-endian length, then JSON with "__metadata__"
    # and each tensor's [begin, end) byte range after the header.
    if len(data) < 8:
        raise ValueError("shorter than the 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if 8 + n > len(data):
        raise ValueError(f"header of {n} bytes runs past the end of the file")
    header = json.loads(data[8 : 8 + n])
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    try:
        ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
    except (KeyError, TypeError, IndexError, ValueError):
        raise ValueError("a tensor entry of the header has no [begin, end] data_offsets") from None
    if 8 + n + max(ends, default=0) > len(data):
        raise ValueError(
            f"truncated: its header describes {8 + n + max(ends)} bytes, the file has {len(data)}"
        )
    return dict(header.get("__metadata__", {}) or {})


def fit_state_dict(model, state: dict, path, strict: bool = True) -> None:
    """Load ``state`` (a checkpoint's weights) into ``model`` after comparing names and
    shapes: a ValueError names the checkpoint ``path`` and lists the names missing,
    unexpected and mis-shaped (a file of another model, or a config tampered with)."""
    expected = model.state_dict()
    state = upgrade_state_dict(model_weights(state), set(expected))
    diff = compare_state_dicts(expected, state)
    if diff["misshaped"] or (strict and (diff["missing"] or diff["unexpected"])):
        raise ValueError(
            f"checkpoint {os.fspath(path)!r} does not fit this model: {describe_differences(diff)}"
        )
    model.load_state_dict(state, strict=strict)


def load_into(model, path, strict: bool = True):
    """Load a checkpoint's weights into ``model`` (an nn.Module); returns the config.

    The names and shapes are compared first, and a ValueError lists the ones that
    differ (missing, unexpected, mis-shaped).
    """
    state, config, _ = load_checkpoint(path)
    fit_state_dict(model, state, path, strict)
    return config


# --- torchvision .pth files ------------------------------------------------------------------


def convert_torchvision(in_path, out_path, config=None, expected=None) -> str:
    """Convert a torchvision Mask R-CNN ``.pth`` (a state_dict) into a checkpoint.

    Needs torch (``pip install torch``); only this function imports it. Keys of
    either generation are accepted and written in the current one.
    config: the MaskRCNNConfig stored with it; by default torchvision's ResNet-50-FPN
    preset with num_classes read from the classifier's shape. A 91-class model is
    stored with COCO's names (``COCO_NAMES``), any other with ``class k``.
    expected: optional function config -> {name: array} of the model the file must fit
    (``lambda cfg: MaskRCNN(cfg).state_dict()``, as the command does); a file of another
    architecture then raises a ValueError listing what does not fit, and nothing is written.
    """
    try:
        import torch
    except ImportError as err:
        raise RuntimeError(
            "convert-torchvision needs torch to read .pth files: pip install torch"
        ) from err
    from .config import MaskRCNNConfig

    raw = torch.load(os.fspath(in_path), map_location="cpu", weights_only=True)
    if isinstance(raw, dict) and "model" in raw and isinstance(raw["model"], dict):
        raw = raw["model"]  # training checkpoints of torchvision's reference scripts
    if not isinstance(raw, dict):
        raise ValueError(f"{os.fspath(in_path)!r} does not hold a state_dict")
    state = upgrade_state_dict({k: v.detach().cpu().numpy() for k, v in raw.items()})
    if config is None:
        cls = state.get("roi_heads.box_predictor.cls_score.weight")
        num_classes = 91 if cls is None else int(cls.shape[0])
        config = MaskRCNNConfig.torchvision_resnet50_fpn(num_classes=num_classes)
    if expected is not None:
        wanted = expected(config)
        diff = compare_state_dicts(wanted, upgrade_state_dict(state, set(wanted)))
        if any(diff.values()):
            raise ValueError(
                f"{os.fspath(in_path)!r} is not torchvision's maskrcnn_resnet50_fpn with "
                f"{config.num_classes} classes: {describe_differences(diff)}"
            )
    names = COCO_NAMES if config.num_classes == len(COCO_NAMES) else None
    source = {"source": os.path.basename(in_path)}
    return save_checkpoint(out_path, state, config, source, class_names=names)


# --- to torchvision -----------------------------------------------------------------------

# torchvision's maskrcnn_resnet50_fpn built with weights=None uses nn.BatchNorm2d, eps 1e-5.
TORCHVISION_BN_EPS = 1e-5

# MaskRCNNConfig fields passed to maskrcnn_resnet50_fpn under the same keyword.
_TORCHVISION_KEYWORDS = (
    "num_classes",
    "min_size",
    "max_size",
    "image_mean",
    "image_std",
    "size_divisible",
    "rpn_pre_nms_top_n_train",
    "rpn_pre_nms_top_n_test",
    "rpn_post_nms_top_n_train",
    "rpn_post_nms_top_n_test",
    "rpn_nms_thresh",
    "rpn_fg_iou_thresh",
    "rpn_bg_iou_thresh",
    "rpn_batch_size_per_image",
    "rpn_positive_fraction",
    "rpn_score_thresh",
    "box_score_thresh",
    "box_nms_thresh",
    "box_detections_per_img",
    "box_fg_iou_thresh",
    "box_bg_iou_thresh",
    "box_batch_size_per_image",
    "box_positive_fraction",
    "bbox_reg_weights",
)
# Fields torchvision fixes in maskrcnn_resnet50_fpn's code: only its own value exports.
_TORCHVISION_FIXED = {
    "backbone": ("resnet50", "the builder makes a ResNet-50"),
    "backbone_width": (1.0, "torchvision's ResNet has no width multiplier"),
    "fpn_out_channels": (256, "the FPN has 256 channels"),
    "box_representation_size": (1024, "TwoMLPHead is 1024 wide"),
    "mask_layers": ((256, 256, 256, 256), "MaskRCNNHeads has four 256-channel convolutions"),
    "mask_dilation": (1, "MaskRCNNHeads is built with dilation 1"),
    "anchor_sizes": (
        ((32,), (64,), (128,), (256,), (512,)),
        "its AnchorGenerator has sizes 32..512 (rpn_anchor_generator takes an object, not JSON)",
    ),
    "aspect_ratios": (
        ((0.5, 1.0, 2.0),) * 5,
        "its AnchorGenerator has ratios 0.5, 1, 2 on every level",
    ),
    "roi_op": ("align", "its poolers are MultiScaleRoIAlign"),
    "box_roi_output_size": (7, "the box pooler is 7 x 7"),
    "mask_roi_output_size": (14, "the mask pooler is 14 x 14"),
    "roi_sampling_ratio": (2, "its poolers sample 2 points per bin and axis"),
    "mask_loss": ("sigmoid", "its mask loss is the per-class sigmoid"),
}


def torchvision_kwargs(cfg) -> dict:
    """The keyword arguments that build ``cfg``'s model in torchvision, as plain JSON values:

        torchvision.models.detection.maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, **torchvision_kwargs(cfg))

    num_classes, the transform's sizes, mean, std and padding, and every RPN and RoI-head
    setting and threshold, under torchvision's names (MaskRCNNConfig's own). Raises a
    ValueError naming each setting that has no keyword there and differs from the value
    torchvision builds in (another backbone, a width multiplier, other anchors, RoIPool,
    other head sizes, ...). ``trainable_backbone_layers`` is left out: without weights
    torchvision trains every layer whatever it is given (freeze stages there yourself),
    and it does not change what the model computes. The batch-norm epsilon is carried by
    the weights ``export_torchvision`` writes.
    """
    values = cfg.to_dict()
    problems = []
    for name, (value, why) in _TORCHVISION_FIXED.items():
        if json.loads(json.dumps(value)) != values[name]:
            problems.append(f"{name}={values[name]!r} ({why}: only {value!r} exports)")
    if problems:
        raise ValueError(
            "torchvision's maskrcnn_resnet50_fpn has no keyword for "
            + "; ".join(problems)
            + ". Export a model built with MaskRCNNConfig.torchvision_resnet50_fpn"
        )
    return {name: values[name] for name in _TORCHVISION_KEYWORDS}


def to_torchvision_state_dict(state: dict, cfg) -> dict:
    """The state_dict (name -> ndarray) that maskrcnn_resnet50_fpn without weights loads
    with ``strict=True``, from a model's ``state`` (torchvision's names) and its config.

    A zero int64 ``num_batches_tracked`` joins every batch norm, and the batch norms'
    weights are rescaled by sqrt((var + 1e-5) / (var + eps)) so that torchvision's
    BatchNorm2d (eps 1e-5) gives the output of this model's epsilon (``frozen_bn_eps``,
    0.0 for the COCO weights); the statistics stay its running_mean and running_var.
    Raises torchvision_kwargs' ValueError for a model torchvision cannot build.
    """
    torchvision_kwargs(cfg)
    state = dict(model_weights(state))
    eps = float(cfg.frozen_bn_eps)
    for name in [k for k in state if k.endswith(".running_var")]:
        prefix = name[: -len("running_var")]
        state[prefix + "num_batches_tracked"] = np.zeros((), np.int64)
        if eps != TORCHVISION_BN_EPS:
            var = state[name].astype(np.float64)
            weight = state[prefix + "weight"]
            ratio = np.sqrt((var + TORCHVISION_BN_EPS) / (var + eps))
            state[prefix + "weight"] = (weight.astype(np.float64) * ratio).astype(weight.dtype)
    return state


def export_torchvision(in_path, out_path) -> str:
    """Write checkpoint ``in_path`` as a torchvision state_dict at ``out_path``.

    ``.safetensors`` (load it with ``safetensors.torch.load_file``; its metadata holds
    ``torchvision_kwargs`` as JSON and the class names) or ``.pth`` (``torch.save``,
    needs torch). Written atomically; the folder must exist. Raises ValueError for a
    model torchvision cannot build (``torchvision_kwargs``), another suffix or a
    missing folder, and RuntimeError for ``.pth`` without torch.
    """
    out_path = os.fspath(out_path)
    suffix = os.path.splitext(out_path)[1].lower()
    if suffix not in (".safetensors", ".pth"):
        raise ValueError(f"{out_path!r}: the output must end in .safetensors or .pth")
    folder = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(folder):
        raise ValueError(f"{out_path!r}: folder {folder!r} does not exist; create it first")
    if suffix == ".pth":
        try:
            import torch
        except ImportError as err:
            raise RuntimeError(
                f"{out_path!r}: writing .pth needs torch (pip install torch); "
                "or write .safetensors, which needs nothing more"
            ) from err
    state, cfg, metadata = load_checkpoint(in_path)
    where = f"checkpoint {os.fspath(in_path)!r}"
    if cfg is None:
        raise ValueError(f"{where} holds no config, so nothing says what model it is")
    try:
        kwargs = torchvision_kwargs(cfg)
    except ValueError as err:
        raise ValueError(f"{where} cannot move to torchvision: {err}") from None
    state = to_torchvision_state_dict(state, cfg)
    if suffix == ".pth":
        tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
        return write_atomically(out_path, lambda f: torch.save(tensors, f))
    from safetensors.numpy import save

    meta = {
        "torchvision_kwargs": json.dumps(kwargs),
        CLASS_NAMES_KEY: json.dumps(list(class_names_of(metadata, cfg, in_path))),
    }
    data = save({k: np.array(v, order="C") for k, v in state.items()}, metadata=meta)
    return write_atomically(out_path, lambda f: f.write(data))
