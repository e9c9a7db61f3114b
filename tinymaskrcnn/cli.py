"""The ``tinymaskrcnn`` command line (docs/architecture.md, Command line).

    tinymaskrcnn tour [--out DIR] [--backend NAME|all] [--seed N] [--image-size PX] [--repeats N]
    tinymaskrcnn tour --image PHOTO [--checkpoint FILE] [--out DIR] [--backend NAME|all]
    tinymaskrcnn train [--config shapes] [--out RUN] [--resume] [--set F=V] [--steps N]
                       [--workers N [--address RAY_ADDRESS]] ...
    tinymaskrcnn predict IMAGE [--out PNG] [--checkpoint FILE] [--score-thresh S]
    tinymaskrcnn evaluate [--checkpoint FILE] [--coco JSON] [--num-images N] [--seed N]
    tinymaskrcnn bench [--backend NAME|all] [--quick]
    tinymaskrcnn convert-torchvision IN.pth OUT.safetensors
    tinymaskrcnn export-torchvision CHECKPOINT OUT(.safetensors|.pth)
    tinymaskrcnn check CASE.npz [--layout L] [--boxes xyxy|normalized-yxyx] [--save-figure PNG]

This module only parses arguments and reports errors; the work is done where it
belongs: the tour and bench in tour.py, training in train.py (whose ``TrainSettings``
fields become train's options), COCO AP in evaluate.py, checkpoints in weights.py, the
RoIAlign check in roi_check.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import sys

from . import commands
from .kernels import BACKENDS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="tinymaskrcnn", description="Mask R-CNN from scratch in NumPy, with Numba kernels."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for add in (_tour, _train, _predict, _evaluate, _bench, _convert, _export, _check):
        add(sub)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except OSError as err:
        # A folder that cannot be created or written, a full disk, a file that is a
        # folder: the file system's own message, as one line, never a traceback.
        commands.fail(args.command, commands.describe_os_error(err))


def _backend_option(p, all_=False):
    if all_:
        p.add_argument(
            "--backend",
            default="all",
            choices=("all",) + BACKENDS,
            metavar="{all," + ",".join(BACKENDS) + "}",
            help="backend to time; 'all' (default) times every one available "
            "(cuda only on a real GPU, not under the simulator)",
        )
    else:
        p.add_argument(
            "--backend",
            default=None,
            choices=BACKENDS,
            help="backend (default: the fastest available, numba when installed)",
        )


def _coco_options(p, what):
    p.add_argument("--coco", default=None, type=pathlib.Path, metavar="JSON", help=what)
    p.add_argument(
        "--images",
        default=None,
        type=pathlib.Path,
        metavar="DIR",
        help="image folder of --coco (default: images/ beside the json)",
    )


# --- tour and bench -----------------------------------------------------------------


def _tour(sub):
    p = sub.add_parser(
        "tour",
        help="run the shipped shapes model stage by stage; print timings, write figures",
        description="Draw synthetic shapes images and run the shapes model shipped in the "
        "package on them, reading every stage from its forward pass (transform, backbone + "
        "FPN, anchors, matching, RPN, proposals + NMS, RoI heads, masks): print what each "
        "stage produced and how long it took on each backend, and write a figure per stage "
        "(anchors, anchor matches, proposals before/after NMS, RoIPool vs RoIAlign on a "
        "detected object, detections with masks). With --image, the same on your photograph "
        "with any checkpoint (--checkpoint; e.g. one made by convert-torchvision), the "
        "anchors matched against the model's own confident detections.",
    )
    p.add_argument(
        "--out",
        default="tour",
        type=pathlib.Path,
        metavar="DIR",
        help="folder for the figures (default: tour/)",
    )
    _backend_option(p, all_=True)
    p.add_argument(
        "--seed", default=0, type=int, metavar="N", help="seed of the shapes images (default: 0)"
    )
    p.add_argument(
        "--image-size",
        default=128,
        type=int,
        metavar="PX",
        help="side of the square shapes images in pixels, at least 64; the model "
        "resizes them to its 128-pixel input (default: 128)",
    )
    p.add_argument(
        "--image",
        default=None,
        type=pathlib.Path,
        metavar="PHOTO",
        help="tour a photograph instead (PNG, JPEG, anything Pillow reads); "
        "--seed and --image-size are then unused",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        type=pathlib.Path,
        metavar="FILE",
        help="with --image: the model to tour, any checkpoint written here or by "
        "convert-torchvision (default: the shipped shapes model)",
    )
    p.add_argument(
        "--repeats",
        default=None,
        type=int,
        metavar="N",
        help="timed runs per backend after the warm-up, the best shown "
        "(default: 3, or 1 with --image)",
    )
    p.set_defaults(run=commands.run_tour)


def _bench(sub):
    p = sub.add_parser(
        "bench",
        help="time the hot ops and a model step on each backend",
        description="Time IoU, NMS, RoIAlign forward and backward, a 3x3 convolution and the "
        "shapes model's inference and training step on each available backend (the median of "
        "--repeats runs after a warm-up, so Numba's compilation is excluded). benchmarks/ has "
        "the full-size scripts with torchvision for comparison.",
    )
    _backend_option(p, all_=True)
    p.add_argument("--repeats", default=3, type=int, help="timed runs per op (default: 3)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    p.set_defaults(run=commands.run_bench)


# --- train: one option per TrainSettings field --------------------------------------


def _field_help(cls) -> dict[str, str]:
    """``name: text`` entries of a dataclass docstring (``a, b: text`` documents both)."""
    helps, names = {}, []
    for line in (cls.__doc__ or "").splitlines():
        entry = re.match(r"\s{4}(\w+(?:, \w+)*): (.*)", line)
        if entry:
            names = entry[1].split(", ")
            helps.update({n: entry[2] for n in names})
        elif line.startswith("        ") and names:  # a continuation line
            helps.update({n: helps[n] + " " + line.strip() for n in names})
        else:
            names = []
    return helps


def _train(sub):
    from .train import TrainSettings

    p = sub.add_parser(
        "train",
        help="train a Mask R-CNN (by default the shapes model) with checkpoints and resume",
        description="Train with SGD (momentum, weight decay, warm-up, step schedule) into a run "
        "folder: checkpoint.safetensors (full state, for --resume), model.safetensors (weights), "
        "log.csv (losses per step) and eval.csv (COCO AP on held-out images). Ctrl-C leaves the "
        "last checkpoint intact; --resume continues from it bit for bit. The options after "
        "--no-progress are the fields of tinymaskrcnn.train.TrainSettings.",
    )
    p.add_argument(
        "--config",
        default="shapes",
        choices=("shapes", "torchvision_resnet50_fpn"),
        help="model preset (default: shapes)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a MaskRCNNConfig field, e.g. --set roi_op=pool (VALUE is read "
        "as JSON, else as a string); repeatable",
    )
    p.add_argument(
        "--out",
        default=pathlib.Path("runs/shapes"),
        type=pathlib.Path,
        help="run folder (default: runs/shapes)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint up to --steps",
    )
    p.add_argument(
        "--address",
        default=None,
        metavar="RAY_ADDRESS",
        help="train on this Ray cluster (`ray start --head` prints its address; 'auto' "
        "finds the local one) with --workers workers; default: a local cluster when "
        "--workers > 1. Not part of the run: a resumed run may use another",
    )
    _coco_options(p, "train on a COCO-format annotation file instead of shapes")
    _backend_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    helps = _field_help(TrainSettings)
    for field in dataclasses.fields(TrainSettings):
        flag = "--" + field.name.replace("_", "-")
        text = f"{helps.get(field.name, field.name)} (default: {field.default})"
        text = text.replace("%", "%%")
        if isinstance(field.default, bool):
            p.add_argument(
                flag, default=field.default, action=argparse.BooleanOptionalAction, help=text
            )
        elif field.name == "milestones":
            p.add_argument(flag, default=None, type=int, nargs="*", help=text)
        else:
            p.add_argument(flag, default=field.default, type=type(field.default), help=text)
    p.set_defaults(run=commands.run_train)


# --- predict and evaluate -----------------------------------------------------------


def _model_options(p):
    p.add_argument(
        "--checkpoint",
        default=None,
        type=pathlib.Path,
        help="model.safetensors or checkpoint.safetensors of a run "
        "(default: the shapes model shipped in the package)",
    )
    _backend_option(p)


def _predict(sub):
    p = sub.add_parser(
        "predict",
        help="detect objects in an image; draw boxes, labels and masks",
        description="Run a model on one image (PNG, JPEG, anything Pillow reads), print its "
        "detections and draw them (boxes, class names, scores, masks) to --out. Grey, "
        "palette, RGBA and 16-bit images are converted to RGB (alpha dropped) and a "
        "photo's EXIF orientation is applied.",
    )
    p.add_argument("image", type=pathlib.Path, help="the image file")
    p.add_argument(
        "--out",
        default=None,
        type=pathlib.Path,
        help="where to draw the detections (default: IMAGE_detections.png)",
    )
    p.add_argument(
        "--score-thresh",
        default=0.5,
        type=float,
        help="draw and print detections scoring at least this (default: 0.5)",
    )
    _model_options(p)
    p.set_defaults(run=commands.run_predict)


def _evaluate(sub):
    p = sub.add_parser(
        "evaluate",
        help="COCO box and mask AP of a model on held-out shapes or a COCO json",
        description="Score a model with pycocotools' COCOeval (bbox and segm AP, AP50, AP75 "
        "and AP per class) on freshly drawn shapes images or on a COCO-format dataset.",
    )
    _coco_options(p, "a COCO-format annotation file (default: shapes images)")
    p.add_argument(
        "--num-images", default=200, type=int, help="shapes images to draw (default: 200)"
    )
    p.add_argument(
        "--seed",
        default=12345,
        type=int,
        help="seed of the shapes images (default: 12345, the held-out set; training uses seed 1)",
    )
    _model_options(p)
    p.set_defaults(run=commands.run_evaluate)


# --- convert-torchvision and check --------------------------------------------------


def _convert(sub):
    p = sub.add_parser(
        "convert-torchvision",
        help="convert a torchvision Mask R-CNN .pth into a safetensors checkpoint (needs torch)",
        description="Read a torchvision Mask R-CNN state_dict (.pth, either key generation) "
        "and write it as a tinymaskrcnn checkpoint with torchvision's ResNet-50-FPN config. "
        "Needs torch (pip install torch); nothing else in tinymaskrcnn does.",
    )
    p.add_argument("input", type=pathlib.Path, help="the .pth file")
    p.add_argument("output", type=pathlib.Path, help="the .safetensors file to write")
    p.set_defaults(run=commands.run_convert)


def _export(sub):
    p = sub.add_parser(
        "export-torchvision",
        help="write a checkpoint as a state_dict torchvision's maskrcnn_resnet50_fpn loads",
        description="Write a checkpoint's weights under torchvision's names, with the batch-norm "
        "counters torchvision's BatchNorm2d expects, so that maskrcnn_resnet50_fpn(weights=None, "
        "weights_backbone=None, **tinymaskrcnn.weights.torchvision_kwargs(cfg)) loads it with "
        "strict=True and gives the same detections. OUT.safetensors needs nothing more (load it "
        "with safetensors.torch.load_file; its metadata holds the kwargs); OUT.pth needs torch. "
        "A model torchvision cannot build (another backbone, a width multiplier, other anchors "
        "or heads, RoIPool) is refused with the settings that stand in the way.",
    )
    p.add_argument("checkpoint", type=pathlib.Path, help="a checkpoint written here")
    p.add_argument("output", type=pathlib.Path, help="the .safetensors or .pth file to write")
    p.set_defaults(run=commands.run_export)


def _check(sub):
    p = sub.add_parser(
        "check",
        help="say which framework's RoIAlign rule produced an output (roi_check.py)",
        description="Load CASE.npz (features, rois, output; optional spatial_scale, "
        "sampling_ratio), run every RoIAlign variant (torchvision, ONNX, onnxruntime, "
        "OpenVINO, mmcv, TensorRT, Caffe2, TensorFlow, RoIPool) and print them ranked, a "
        "verdict, and where the closest one departs. Exit 0 on a match, 1 on none, 2 on bad input.",
    )
    p.add_argument("case", type=pathlib.Path, help="the .npz file")
    p.add_argument(
        "--layout", choices=("nchw", "nhwc"), default="nchw", help="of features and output"
    )
    p.add_argument(
        "--boxes",
        choices=("xyxy", "normalized-yxyx"),
        default="xyxy",
        help="xyxy: input pixels; normalized-yxyx: TensorFlow's [y1, x1, y2, x2] over size - 1",
    )
    p.add_argument("--save-figure", metavar="PNG", help="draw the RoI with the largest gap")
    p.set_defaults(run=commands.run_check)


if __name__ == "__main__":
    sys.exit(main())
