"""COCO-format data: read an annotation json and its images, write any dataset as one.

The COCO format (Lin et al., 2014, "Microsoft COCO"; cocodataset.org/#format-data) is
what every detection tool reads, and what pycocotools' COCOeval scores (evaluate.py).
A file holds three lists: ``images`` (id, file_name, height, width), ``categories``
(id, name) and ``annotations`` (id, image_id, category_id, bbox [x, y, w, h],
segmentation, area, iscrowd). A segmentation is either polygons (lists of
x0, y0, x1, y1, ... in pixels) or a run-length encoding (RLE, a dict with ``size``
[h, w] and ``counts``, compressed string or plain list); both are decoded with
``pycocotools.mask``.

Shapes used below:
    H, W: image height and width
    G:    annotations of one image (crowd regions excluded)

Conventions (those of torchvision's detection references):
* Labels are the category ids themselves, not renumbered: a COCO file with ids 1..90
  needs a model with 91 classes. ``CocoDataset.CLASSES[label]`` is the category's name;
  0 is "background" and ids missing from the file are "N/A".
* Crowd annotations (iscrowd 1) stay out of the training targets; COCOeval still sees
  them, since evaluate.py scores against the file itself.
* The whole file is checked when it is opened. A bad record — an unknown image or
  category, a polygon or box outside its image by more than ``SLACK`` pixels, a missing
  image file, a duplicate id — raises a ``CocoFormatError`` (or ``FileNotFoundError``)
  naming the file and the record: nothing is skipped or half-loaded. Images are decoded
  on access; one that does not decode, or whose size is not the size the file states,
  raises at ``ds[i]`` in the same way.
* ``export_coco`` writes compressed RLE segmentations (exact for any mask) and 8-bit PNG
  images, each file to a temporary name first and then renamed.
"""

from __future__ import annotations

import json
import math
import os
import warnings

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..atomic_file import write_atomically
from .images import read_image

# Annotation tools round coordinates: a polygon vertex or box edge may lie this far
# outside its image and still be accepted; anything farther is an error.
SLACK = 1.0
BACKGROUND = "background"
NO_CATEGORY = "N/A"


class CocoFormatError(ValueError):
    """A COCO file, or one of its records, is not what the format requires."""


# --- reading -----------------------------------------------------------------------


class CocoDataset:
    """``ds[i] -> (image, target)`` for the i-th image of a COCO-format annotation file.

    json_path: the annotation file.
    image_dir: the folder that ``file_name`` is relative to; by default ``images/``
               next to the json (the layout ``export_coco`` writes).

    image:  (3, H, W) float32 RGB in [0, 1] (data/images.read_image: grey, palette and
            16-bit images converted to RGB; the stored pixels, no EXIF rotation).
    target: {"boxes": (G, 4) float32 x1y1x2y2 pixels (from the ``bbox`` field),
             "labels": (G,) int64 category ids,
             "masks": (G, H, W) uint8 in {0, 1} (the decoded segmentations)},
            annotations in file order, crowd regions excluded; G may be 0.

    Attributes: ``CLASSES`` (name per label), ``image_ids`` (COCO id of each index),
    ``coco`` (the parsed file, as evaluate.py hands it to COCOeval).
    """

    def __init__(self, json_path, image_dir=None):
        self.json_path = os.fspath(json_path)
        if image_dir is None:
            image_dir = os.path.join(os.path.dirname(os.path.abspath(self.json_path)), "images")
        self.image_dir = os.fspath(image_dir)
        if not os.path.isfile(self.json_path):
            raise FileNotFoundError(f"COCO annotation file {self.json_path} does not exist")
        try:
            with open(self.json_path, encoding="utf-8") as f:
                coco = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CocoFormatError(f"{self.json_path}: not valid JSON: {e}") from None
        self.coco = coco
        self._images, self._annotations, categories = _check_file(coco, self._where)
        self.image_ids = [record["id"] for record in self._images]
        self.CLASSES = _class_names(categories)
        for k, record in enumerate(self._images):
            path = os.path.join(self.image_dir, record["file_name"])
            if not os.path.isfile(path):
                what = "is a folder, not a file" if os.path.isdir(path) else "does not exist"
                raise FileNotFoundError(
                    f"{self._where('images', k, record)}: image file {path} {what}"
                )

    def __len__(self):
        return len(self._images)

    def __getitem__(self, i):
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"CocoDataset index must be an int; got {type(i).__name__}")
        if not -len(self) <= i < len(self):
            raise IndexError(f"image index {i} out of range for {len(self)} images")
        k = int(i) % len(self)
        record = self._images[k]
        height, width = record["height"], record["width"]
        image = self._read_image(k, record)
        annotations = [a for a in self._annotations[record["id"]] if not a.get("iscrowd", 0)]
        boxes = np.array([a["bbox"] for a in annotations], np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        masks = np.zeros((len(annotations), height, width), np.uint8)
        for g, annotation in enumerate(annotations):
            masks[g] = decode_rle(segmentation_to_rle(annotation["segmentation"], height, width))
        labels = np.array([a["category_id"] for a in annotations], np.int64)
        return image, {"boxes": boxes, "labels": labels, "masks": masks}

    def _read_image(self, k, record):
        path = os.path.join(self.image_dir, record["file_name"])
        where = self._where("images", k, record)
        try:
            # The stored pixel order, not the EXIF-rotated one: COCO annotations (and
            # torchvision's CocoDetection, which reads them) refer to the stored pixels.
            image = read_image(path, exif_orientation=False)
        except FileNotFoundError:
            raise FileNotFoundError(f"{where}: image file {path} does not exist") from None
        except ValueError as e:
            raise CocoFormatError(f"{where}: {e}") from None
        if image.shape[1:] != (record["height"], record["width"]):
            raise CocoFormatError(
                f"{where}: image file {path} is {image.shape[1]} x {image.shape[2]} (H x W) but "
                f"the record says {record['height']} x {record['width']}"
            )
        return image

    def _where(self, section=None, k=None, record=None):
        """'file: section[k] (id 7)' — how every error names its file and record."""
        if section is None:
            return self.json_path
        rid = f" (id {record['id']!r})" if isinstance(record, dict) and "id" in record else ""
        index = "" if k is None else f"[{k}]"
        return f"{self.json_path}: {section}{index}{rid}"


def _check_file(coco, where):
    """Check every record; return (images, annotations per image id, categories by id)."""
    if not isinstance(coco, dict):
        raise CocoFormatError(f"{where()}: expected a JSON object at the top level")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise CocoFormatError(f"{where()}: the file needs a list {key!r}")
    if not coco["images"]:
        raise CocoFormatError(f"{where()}: the dataset is empty (no images)")

    images = {}
    for k, record in enumerate(coco["images"]):
        at = where("images", k, record)
        _need(record, {"id": int, "file_name": str, "height": int, "width": int}, at)
        if record["height"] < 1 or record["width"] < 1:
            raise CocoFormatError(f"{at}: height and width must be positive")
        if record["id"] in images:
            raise CocoFormatError(f"{at}: duplicate image id {record['id']}")
        images[record["id"]] = record

    categories = {}
    for k, record in enumerate(coco["categories"]):
        at = where("categories", k, record)
        _need(record, {"id": int, "name": str}, at)
        if record["id"] < 1:
            raise CocoFormatError(f"{at}: category ids start at 1 (0 is the background)")
        if record["id"] in categories:
            raise CocoFormatError(f"{at}: duplicate category id {record['id']}")
        if any(record["name"] == other["name"] for other in categories.values()):
            raise CocoFormatError(f"{at}: duplicate category name {record['name']!r}")
        categories[record["id"]] = record

    per_image = {image_id: [] for image_id in images}
    seen = set()
    for k, record in enumerate(coco["annotations"]):
        at = where("annotations", k, record)
        _need(record, {"id": int, "image_id": int, "category_id": int, "bbox": list}, at)
        if "segmentation" not in record:
            raise CocoFormatError(f"{at}: missing 'segmentation' (Mask R-CNN needs masks)")
        if record["id"] in seen:
            raise CocoFormatError(f"{at}: duplicate annotation id {record['id']}")
        seen.add(record["id"])
        if record["image_id"] not in images:
            raise CocoFormatError(f"{at}: refers to unknown image id {record['image_id']}")
        if record["category_id"] not in categories:
            raise CocoFormatError(f"{at}: refers to unknown category id {record['category_id']}")
        if record.get("iscrowd", 0) not in (0, 1):
            raise CocoFormatError(f"{at}: iscrowd must be 0 or 1; got {record['iscrowd']!r}")
        image = images[record["image_id"]]
        size = (image["height"], image["width"])
        _check_bbox(record["bbox"], size, at, crowd=bool(record.get("iscrowd", 0)))
        _check_segmentation(record["segmentation"], size, at)
        per_image[record["image_id"]].append(record)
    return list(images.values()), per_image, categories


def _need(record, fields, at):
    if not isinstance(record, dict):
        raise CocoFormatError(f"{at}: expected an object; got {type(record).__name__}")
    for key, kind in fields.items():
        value = record.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CocoFormatError(f"{at}: field {key!r} must be a {kind.__name__}; got {value!r}")


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_bbox(bbox, size, at, crowd):
    height, width = size
    if len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise CocoFormatError(f"{at}: bbox must be 4 finite numbers [x, y, w, h]; got {bbox!r}")
    x, y, w, h = bbox
    # A zero-size box cannot be encoded as regression deltas (log of 0): reported here
    # rather than filtered out later, as torchvision's references do silently.
    if w < 0 or h < 0 or (not crowd and (w == 0 or h == 0)):
        raise CocoFormatError(f"{at}: bbox width and height must be positive; got {bbox!r}")
    if x < -SLACK or y < -SLACK or x + w > width + SLACK or y + h > height + SLACK:
        raise CocoFormatError(
            f"{at}: bbox {bbox!r} lies outside its {height} x {width} (H x W) image"
        )


def _check_segmentation(segmentation, size, at):
    height, width = size
    if isinstance(segmentation, dict):
        counts = segmentation.get("counts")
        if list(segmentation.get("size", [])) != [height, width]:
            raise CocoFormatError(
                f"{at}: RLE size {segmentation.get('size')!r} is not the image's "
                f"[{height}, {width}]"
            )
        if isinstance(counts, list):
            if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != (
                height * width
            ):
                raise CocoFormatError(
                    f"{at}: uncompressed RLE counts must be non-negative ints summing to "
                    f"{height} * {width}"
                )
        elif isinstance(counts, str):
            runs = compressed_rle_counts(counts)
            if runs is None or min(runs, default=0) < 0 or sum(runs) != height * width:
                raise CocoFormatError(
                    f"{at}: compressed RLE counts {counts[:40]!r} do not decode to runs "
                    f"covering the {height} x {width} image"
                )
        else:
            raise CocoFormatError(f"{at}: RLE counts must be a string or a list of ints")
        return
    if not isinstance(segmentation, list) or not segmentation:
        raise CocoFormatError(
            f"{at}: segmentation must be a list of polygons or an RLE dict; got {segmentation!r}"
        )
    for p, polygon in enumerate(segmentation):
        if (
            not isinstance(polygon, list)
            or len(polygon) < 6
            or len(polygon) % 2
            or not all(_is_number(v) for v in polygon)
        ):
            raise CocoFormatError(
                f"{at}: polygon {p} must be a flat list x0, y0, x1, y1, ... of at least 3 points"
            )
        xs, ys = np.array(polygon[0::2]), np.array(polygon[1::2])
        if (
            xs.min() < -SLACK
            or ys.min() < -SLACK
            or (xs.max() > width + SLACK or ys.max() > height + SLACK)
        ):
            raise CocoFormatError(
                f"{at}: polygon {p} reaches ({xs.min():g}..{xs.max():g}, "
                f"{ys.min():g}..{ys.max():g}), outside its {height} x {width} (H x W) image"
            )


def compressed_rle_counts(text: str) -> list[int] | None:
    """The run lengths of COCO's compressed RLE string, or None if it is malformed.

    The format of pycocotools' ``rleToString``: each run is a little-endian sequence of
    5-bit groups, one character (48 + group) each, bit 5 set while more groups follow and
    bit 4 of the last one the sign; from the third run on, what is stored is the
    difference to the run two before. pycocotools decodes any string without a word,
    so a damaged one would silently become a wrong mask.
    """
    runs, value, shift = [], 0, 0
    for char in text:
        c = ord(char) - 48
        if not 0 <= c < 64:
            return None
        value |= (c & 0x1F) << shift
        shift += 5
        if c & 0x20:
            continue
        if c & 0x10:
            value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
        value, shift = 0, 0
    return None if shift else runs


def segmentation_to_rle(segmentation, height, width):
    """The pycocotools RLE (counts as bytes) of a polygon list or an RLE dict."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    counts = segmentation["counts"]
    return dict(segmentation, counts=counts.encode("ascii") if isinstance(counts, str) else counts)


def decode_rle(rle):
    """(H, W) uint8 mask of one pycocotools RLE."""
    # pycocotools 2.0 builds its output with np.array(..., copy=False) semantics that
    # NumPy 2 deprecates; the result is right, the warning is noise for our users.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="pycocotools")
        return mask_utils.decode(rle)


def _class_names(categories):
    names = [NO_CATEGORY] * (max(categories, default=0) + 1)
    names[0] = BACKGROUND
    for category_id, record in categories.items():
        names[category_id] = record["name"]
    return tuple(names)


# --- writing -----------------------------------------------------------------------


def coco_dict(dataset, categories=None, with_images=None):
    """The COCO annotation dict of any ``ds[i] -> (image, target)`` dataset.

    categories: names indexed by label (0 background, "N/A" for unused ids); by default
                ``dataset.CLASSES``.
    with_images: called as ``with_images(i, image, file_name)`` for every image (the
                exporter writes it); None to read only the targets' shapes.
    Image ids are ``dataset.image_ids`` when it has them, else 1, 2, ...; file names
    ``000000.png``, ...; annotation ids 1, 2, ... in order. Boxes come from the targets,
    segmentations are the masks as compressed RLE, area is the mask's pixel count.
    Only what ``dataset[i]`` returns is written: a CocoDataset's crowd regions are not.
    """
    if len(dataset) == 0:
        raise ValueError("dataset is empty: nothing to write in COCO format")
    names = tuple(categories if categories is not None else getattr(dataset, "CLASSES", ()))
    if len(names) < 2:
        raise ValueError(
            "categories must name the labels (index 0 background), e.g. dataset.CLASSES; "
            f"got {names!r}"
        )
    image_ids = list(getattr(dataset, "image_ids", range(1, len(dataset) + 1)))
    images, annotations = [], []
    for i in range(len(dataset)):
        image, target = dataset[i]
        image = np.asarray(image)
        where = f"dataset[{i}]"
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"{where}: image must be (3, H, W); got shape {image.shape}")
        height, width = image.shape[1:]
        file_name = f"{i:06d}.png"
        images.append(
            {"id": image_ids[i], "file_name": file_name, "height": height, "width": width}
        )
        if with_images is not None:
            with_images(i, image, file_name)
        boxes, labels, masks = _check_target(target, (height, width), names, where)
        for box, label, mask in zip(boxes, labels, masks, strict=True):
            rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_ids[i],
                    "category_id": int(label),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "segmentation": {"size": [height, width], "counts": rle["counts"].decode()},
                    "area": float(mask_utils.area(rle)),
                    "iscrowd": 0,
                }
            )
    category_records = [
        {"id": k, "name": name, "supercategory": "object"}
        for k, name in enumerate(names)
        if k > 0 and name != NO_CATEGORY
    ]
    return {
        "info": {"description": f"exported by tinymaskrcnn from {type(dataset).__name__}"},
        "images": images,
        "annotations": annotations,
        "categories": category_records,
    }


def export_coco(dataset, out_dir, categories=None):
    """Write ``dataset`` to ``out_dir`` in COCO format; return the json's path.

    out_dir/annotations.json and out_dir/images/000000.png, ... (8-bit RGB PNG, the
    image's [0, 1] floats rounded to multiples of 1/255, which the shapes dataset's
    colours already are). Every file is written to a temporary name and renamed; the
    json comes last, so an interrupted export leaves no annotation file pointing at
    missing images. ``CocoDataset(path)`` reads it back with the same targets.
    """
    image_dir = os.path.join(os.fspath(out_dir), "images")
    os.makedirs(image_dir, exist_ok=True)

    def write_png(i, image, file_name):
        if image.min() < 0 or image.max() > 1 or not np.isfinite(image).all():
            raise ValueError(f"dataset[{i}]: image values must lie in [0, 1]")
        pixels = np.round(image.transpose(1, 2, 0) * 255).astype(np.uint8)
        write_atomically(
            os.path.join(image_dir, file_name),
            lambda f: Image.fromarray(pixels, "RGB").save(f, format="PNG"),
        )

    coco = coco_dict(dataset, categories, with_images=write_png)
    json_path = os.path.join(os.fspath(out_dir), "annotations.json")
    write_atomically(json_path, lambda f: f.write(json.dumps(coco).encode("utf-8")))
    return json_path


def _check_target(target, size, names, where):
    try:
        boxes, labels, masks = (np.asarray(target[k]) for k in ("boxes", "labels", "masks"))
    except (KeyError, TypeError):
        raise ValueError(f"{where}: target must be a dict with boxes, labels, masks") from None
    g = len(labels)
    if boxes.shape != (g, 4) or labels.shape != (g,) or masks.shape != (g, *size):
        raise ValueError(
            f"{where}: target must hold boxes (G, 4), labels (G,), masks (G, {size[0]}, "
            f"{size[1]}); got {boxes.shape}, {labels.shape}, {masks.shape}"
        )
    for label in labels:
        if not 0 < label < len(names) or names[label] == NO_CATEGORY:
            raise ValueError(f"{where}: label {label} names no category of {names}")
    return boxes, labels, masks
