"""COCO mean average precision of a model's detections, boxes and masks
(docs/architecture.md, Training).

The numbers every Mask R-CNN paper reports (Mask R-CNN, Table 1) come from pycocotools'
COCOeval: for each class, detections are ranked by score and matched greedily to
ground truth at an IoU threshold (box IoU for "bbox", mask IoU for "segm"); the area
under the interpolated precision-recall curve (101 recall points) is the average
precision; AP averages it over the thresholds 0.50, 0.55, ..., 0.95 and the classes,
AP50 and AP75 take one threshold. At most 100 detections per image count.

Shapes used below:
    N: images          D: detections of one image          H, W: image size

This module only converts: predictions to COCO results, the dataset to COCO ground
truth (a ``CocoDataset`` hands over its own file, crowd regions included; any other
dataset, e.g. the shapes, goes through ``data.coco.coco_dict``), then runs COCOeval.
Masks are binarised at probability > 0.5, as torchvision's evaluation does.
"""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .data.coco import coco_dict, segmentation_to_rle

IOU_TYPES = ("bbox", "segm")
# COCOeval.stats[0:6], in its order.
_SUMMARY = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def evaluate(predictions, dataset, iou_types=IOU_TYPES, verbose=False):
    """Score ``predictions`` against ``dataset`` with COCOeval.

    predictions: list of N dicts, the model's eval output
        (docs/architecture.md, Stage map and data flow), predictions[i]
        for dataset[i]: "boxes" (D, 4) x1y1x2y2 pixels of the dataset's image,
        "labels" (D,) int (dataset labels), "scores" (D,) float, and for "segm"
        "masks" (D, 1, H, W) float32 probabilities.
    dataset: any ``ds[i] -> (image, target)`` dataset with ``CLASSES`` (names indexed
        by label); a ``CocoDataset`` is scored against its own annotation file.
    iou_types: any of "bbox", "segm".
    verbose: let pycocotools print its progress and its summary table.

    Returns {iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl": float in [0, 1] or
    None, "per_class": {class name: AP or None}}}. None stands where COCOeval has no
    ground truth to score (e.g. APs when no object is small, a class absent from the
    set): COCOeval's -1, never a number that could be averaged by mistake.
    """
    iou_types = tuple(iou_types)
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"iou_types must be among {IOU_TYPES}; got {iou_type!r}")
    if len(predictions) != len(dataset):
        raise ValueError(
            f"predictions must hold one dict per dataset image ({len(dataset)}); "
            f"got {len(predictions)}"
        )
    if len(dataset) == 0:
        raise ValueError("dataset is empty: there is nothing to evaluate")

    if hasattr(dataset, "coco") and hasattr(dataset, "image_ids"):
        gt_dict = dataset.coco
    else:
        gt_dict = coco_dict(dataset)
    image_ids = [record["id"] for record in gt_dict["images"]]
    sizes = [(record["height"], record["width"]) for record in gt_dict["images"]]
    category_ids = {record["id"] for record in gt_dict["categories"]}
    names = {record["id"]: record["name"] for record in gt_dict["categories"]}

    gt_dict = _with_areas(gt_dict)
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        gt = _coco(gt_dict)
        results = {}
        for iou_type in iou_types:
            detections = _detections(predictions, image_ids, sizes, category_ids, iou_type)
            dt = _coco({**_header(gt_dict), "annotations": detections})
            coco_eval = COCOeval(gt, dt, iou_type)
            coco_eval.params.imgIds = image_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
            if verbose:
                print(f"--- {iou_type} ---")
            coco_eval.summarize()
            results[iou_type] = _scores(coco_eval, names)
    return results


def _coco(dataset_dict):
    """A pycocotools COCO object around a dict (its constructor only reads files)."""
    coco = COCO()
    coco.dataset = copy.copy(dataset_dict)
    coco.createIndex()
    return coco


def _with_areas(gt_dict):
    """The ground truth with the ``area`` and ``iscrowd`` that COCOeval reads on every
    annotation (optional in files made by other tools): area from the segmentation."""
    sizes = {record["id"]: (record["height"], record["width"]) for record in gt_dict["images"]}
    annotations = []
    for record in gt_dict["annotations"]:
        if "area" not in record or "iscrowd" not in record:
            record = dict(record)
            record.setdefault("iscrowd", 0)
            if "area" not in record:
                height, width = sizes[record["image_id"]]
                rle = segmentation_to_rle(record["segmentation"], height, width)
                record["area"] = float(mask_utils.area(rle))
        annotations.append(record)
    return {**gt_dict, "annotations": annotations}


def _header(gt_dict):
    return {"images": gt_dict["images"], "categories": gt_dict["categories"]}


def _detections(predictions, image_ids, sizes, category_ids, iou_type):
    """COCO result records (with the area and id COCOeval expects) of every prediction.

    Built here rather than by COCO.loadRes, which fails on an empty list and, given
    both a box and a segmentation, silently replaces the mask by the box's rectangle.
    """
    records = []
    for i, (prediction, image_id, size) in enumerate(
        zip(predictions, image_ids, sizes, strict=True)
    ):
        boxes, labels, scores, masks = _check_prediction(prediction, i, size, iou_type)
        for label in set(labels.tolist()) - category_ids:
            raise ValueError(
                f"predictions[{i}]: label {label} is no category of the dataset "
                f"({sorted(category_ids)})"
            )
        for d in range(len(labels)):
            record = {
                "id": len(records) + 1,
                "image_id": image_id,
                "category_id": int(labels[d]),
                "score": float(scores[d]),
                "iscrowd": 0,
            }
            if iou_type == "bbox":
                x1, y1, x2, y2 = (float(v) for v in boxes[d])
                record["bbox"] = [x1, y1, x2 - x1, y2 - y1]
                record["area"] = (x2 - x1) * (y2 - y1)
            else:
                rle = mask_utils.encode(np.asfortranarray(masks[d, 0] > 0.5, dtype=np.uint8))
                record["segmentation"] = rle
                record["area"] = float(mask_utils.area(rle))
                record["bbox"] = mask_utils.toBbox(rle).tolist()
            records.append(record)
    return records


def _check_prediction(prediction, i, size, iou_type):
    needed = ("boxes", "labels", "scores") + (("masks",) if iou_type == "segm" else ())
    if not isinstance(prediction, dict) or any(k not in prediction for k in needed):
        raise ValueError(f"predictions[{i}] must be a dict with {', '.join(needed)}")
    boxes = np.asarray(prediction["boxes"], np.float64)
    labels = np.asarray(prediction["labels"])
    scores = np.asarray(prediction["scores"], np.float64)
    d = len(labels)
    if boxes.shape != (d, 4) or labels.shape != (d,) or scores.shape != (d,):
        raise ValueError(
            f"predictions[{i}]: boxes must be (D, 4), labels (D,), scores (D,); got "
            f"{boxes.shape}, {labels.shape}, {scores.shape}"
        )
    if d and (not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"predictions[{i}]: labels must be integers; got {labels.dtype}")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError(f"predictions[{i}]: boxes and scores must be finite")
    masks = None
    if iou_type == "segm":
        masks = np.asarray(prediction["masks"])
        if masks.shape != (d, 1, *size):
            raise ValueError(
                f"predictions[{i}]: masks must be (D, 1, H, W) = ({d}, 1, {size[0]}, "
                f"{size[1]}); got {masks.shape}"
            )
    return boxes, labels.astype(np.int64), scores, masks


def _scores(coco_eval, names):
    """Summary numbers and per-class AP from an accumulated COCOeval (-1 -> None)."""
    summary = {
        key: (None if value < 0 else float(value))
        for key, value in zip(_SUMMARY, coco_eval.stats[: len(_SUMMARY)], strict=True)
    }
    # precision: (IoU thresholds, recall points, classes, area ranges, max dets);
    # area range 0 is "all", max dets -1 is 100.
    precision = coco_eval.eval["precision"]
    per_class = {}
    for k, category_id in enumerate(coco_eval.params.catIds):
        p = precision[:, :, k, 0, -1]
        per_class[names[category_id]] = float(p[p > -1].mean()) if (p > -1).any() else None
    summary["per_class"] = per_class
    return summary


def format_table(results):
    """The result of ``evaluate`` as a plain-text table, one row per IoU type.

    Columns AP, AP50, AP75, then the AP of each class; "-" where the value is None.
    """
    classes = sorted({name for r in results.values() for name in r["per_class"]})
    header = ["", "AP", "AP50", "AP75", *classes]
    rows = [header]
    for iou_type, r in results.items():
        values = [r["AP"], r["AP50"], r["AP75"], *(r["per_class"].get(c) for c in classes)]
        rows.append([iou_type, *("-" if v is None else f"{v:.3f}" for v in values)])
    widths = [max(len(row[k]) for row in rows) for k in range(len(header))]
    return "\n".join(
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
