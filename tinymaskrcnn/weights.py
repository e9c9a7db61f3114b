"""Checkpoints: safetensors files with the config inside, and torchvision's names.

A checkpoint is a safetensors file (no pickle: loading one cannot run code) holding
every parameter and buffer under torchvision's ``state_dict`` names, plus metadata:
``config`` (the MaskRCNNConfig as JSON) and ``format`` (this module's version).
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
a checkpoint (it needs torch, which the rest of the package never imports).
"""

from __future__ import annotations

import json
import os

import numpy as np

from .atomic_file import write_atomically
from .nn.module import KEY_RENAMES, new_key, upgrade_state_dict  # noqa: F401 (re-exported)

FORMAT = "tinymaskrcnn-1"

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


# --- files ------------------------------------------------------------------------------


def save_checkpoint(path, state: dict, config=None, metadata: dict | None = None) -> str:
    """Write ``state`` (name -> ndarray) and the config to a safetensors file, atomically.

    config: a MaskRCNNConfig (stored as JSON under the metadata key "config") or None.
    metadata: extra str -> str entries (e.g. training step). Returns the path.
    """
    from safetensors.numpy import save

    meta = {"format": FORMAT}
    if config is not None:
        meta["config"] = config.to_json()
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
    that does not parse, and for a tensor holding NaN or infinity.
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


def convert_torchvision(in_path, out_path, config=None) -> str:
    """Convert a torchvision Mask R-CNN ``.pth`` (a state_dict) into a checkpoint.

    Needs torch (``pip install torch``); only this function imports it. Keys of
    either generation are accepted and written in the current one.
    config: the MaskRCNNConfig stored with it; by default torchvision's ResNet-50-FPN
    preset with num_classes read from the classifier's shape.
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
    return save_checkpoint(out_path, state, config, {"source": os.path.basename(in_path)})
