"""Images in, a padded batch out; detections back in the original images' pixels.

The first and last step of the model (torchvision's GeneralizedRCNNTransform;
docs/architecture.md, Transform):

1. check every image and target, naming the image and the field that is wrong;
2. normalise with the ImageNet mean and std (the backbone was trained on those);
3. resize so the short side is ``min_size`` unless the long side would pass
   ``max_size`` — bilinear with half-pixel centres for images, nearest for masks,
   boxes scaled by the same ratios;
4. pad the batch with zeros at the bottom and right to a multiple of 32, so that every
   stride of the feature pyramid divides it.

After the heads, ``postprocess`` scales boxes back to each original image and pastes
the 28x28 masks into it.

Shapes used below:
    N: images        H, W: one image's height and width (original frame)
    h, w: after resizing (resized frame)      Hp, Wp: padded batch size
    G: ground-truth objects of one image      D: detections of one image
"""

from __future__ import annotations

import math

import numpy as np

from .masks import paste_masks_in_image
from .nn import resize_bilinear

# --- checks ---------------------------------------------------------------------------


def check_images(images) -> list[np.ndarray]:
    """Each image must be a finite (3, H, W) float array, RGB in [0, 1]; returns them as a list.

    The errors name the image and say how to convert the usual mistakes: uint8 0-255
    pixels, grey or RGBA channels, (H, W, 3) layout. Any H, W >= 1 is accepted: a very
    long thin image resizes to at least one pixel across (``resized_size``).
    """
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        what = "an empty list" if isinstance(images, (list, tuple)) else type(images).__name__
        if isinstance(images, np.ndarray):
            what = f"one array of shape {images.shape}; pass a list, [image]"
        raise ValueError(f"images must be a non-empty list of (3, H, W) float arrays; got {what}")
    out = []
    for i, image in enumerate(images):
        where = f"images[{i}]"
        try:
            image = np.asarray(image)
        except ValueError as err:  # ragged nested lists
            raise ValueError(f"{where} must be a (3, H, W) array; got {err}") from None
        if image.ndim != 3 or image.shape[0] != 3 or min(image.shape[1:]) < 1:
            raise ValueError(
                f"{where} must be (3, H, W) RGB; got shape {image.shape}"
                + _layout_hint(image.shape)
            )
        if not np.issubdtype(image.dtype, np.floating):
            hint = (
                ": divide 0-255 pixels by 255, image.astype(np.float32) / 255"
                if np.issubdtype(image.dtype, np.integer)
                else ""
            )
            raise ValueError(f"{where} must be float, RGB in [0, 1]; got dtype {image.dtype}{hint}")
        if not np.all(np.isfinite(image)):
            raise ValueError(f"{where} holds NaN or infinite values")
        low, high = float(image.min()), float(image.max())
        # The ImageNet normalisation assumes [0, 1]: a 0-255 image would run silently
        # and detect nothing.
        if low < 0 or high > 1:
            hint = "; divide 0-255 pixels by 255" if high > 1 else ""
            raise ValueError(
                f"{where} must hold RGB in [0, 1]; got values in [{low:g}, {high:g}]{hint}"
            )
        out.append(image)
    return out


def _layout_hint(shape) -> str:
    """How to turn the usual wrong layouts into (3, H, W)."""
    if len(shape) == 3 and min(shape[1:]) < 1:
        return " (an empty image: H and W must be at least 1)"
    if len(shape) == 3 and shape[2] in (1, 3, 4) and shape[0] not in (1, 3, 4):
        return " (this looks like (H, W, C): use image.transpose(2, 0, 1))"
    if len(shape) == 2:
        return " (a grey (H, W) image: use np.repeat(image[None], 3, axis=0))"
    if len(shape) == 3 and shape[0] == 1:
        return " (one grey channel: use np.repeat(image, 3, axis=0))"
    if len(shape) == 3 and shape[0] == 4:
        return " (four channels, RGBA: drop the alpha channel, image[:3])"
    return ""


def check_targets(targets, image_sizes, num_classes: int) -> list[dict]:
    """Validate training targets against their images (original frame).

    targets: list of dicts, one per image, with
        boxes  (G, 4) float x1y1x2y2 in the image's pixels, inside [0, W] x [0, H],
               positive width and height;
        labels (G,) int in [1, num_classes);
        masks  (G, H, W) uint8 (or bool, or any number type) holding only 0 and 1.
    image_sizes: list of (H, W). G = 0 is allowed: the image trains as background.
    Returns a list of dicts with boxes float32, labels int64, masks uint8.
    """
    if not isinstance(targets, (list, tuple)) or len(targets) != len(image_sizes):
        given = len(targets) if isinstance(targets, (list, tuple)) else type(targets).__name__
        raise ValueError(
            f"targets must be a list with one dict per image ({len(image_sizes)}); got {given}"
        )
    out = []
    for i, (target, (height, width)) in enumerate(zip(targets, image_sizes, strict=True)):
        where = f"targets[{i}]"
        if not isinstance(target, dict) or not {"boxes", "labels", "masks"} <= set(target):
            got = sorted(target) if isinstance(target, dict) else type(target).__name__
            raise ValueError(
                f"{where} must be a dict with 'boxes', 'labels' and 'masks' (the mask head "
                f"trains on the masks); got {got}"
            )
        try:
            boxes = np.asarray(target["boxes"], dtype=np.float32)
        except (ValueError, TypeError):
            raise ValueError(
                f"{where}['boxes'] must be (G, 4) numbers x1y1x2y2; got {target['boxes']!r:.80}"
            ) from None
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(
                f"{where}['boxes'] must be (G, 4) x1y1x2y2; got shape {np.shape(target['boxes'])}"
            )
        g = len(boxes)
        labels = np.asarray(target["labels"])
        if labels.shape != (g,) or (g and not np.issubdtype(labels.dtype, np.integer)):
            raise ValueError(
                f"{where}['labels'] must be ({g},) integers; got shape {labels.shape}, "
                f"dtype {labels.dtype}"
            )
        if not np.all(np.isfinite(boxes)):
            raise ValueError(f"{where}['boxes'] holds NaN or infinite coordinates")
        bad = np.flatnonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
        if bad.size:
            raise ValueError(
                f"{where}['boxes'][{bad[0]}] = {boxes[bad[0]].tolist()} has zero or negative "
                f"width or height; every box needs x2 > x1 and y2 > y1"
            )
        outside = np.flatnonzero(
            (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width) | (boxes[:, 3] > height)
        )
        if outside.size:
            raise ValueError(
                f"{where}['boxes'][{outside[0]}] = {boxes[outside[0]].tolist()} lies outside "
                f"the image [0, {width}] x [0, {height}] (x, y)"
            )
        if g and (labels.min() < 1 or labels.max() >= num_classes):
            raise ValueError(
                f"{where}['labels'] must be in [1, {num_classes - 1}] (0 is background, "
                f"num_classes={num_classes}); got values in [{labels.min()}, {labels.max()}]"
            )
        masks = np.asarray(target["masks"])
        if masks.shape != (g, height, width):
            raise ValueError(
                f"{where}['masks'] must be ({g}, {height}, {width}), one full-image mask "
                f"per box; got shape {masks.shape}"
            )
        # A float mask of probabilities would be cast to uint8 and lose everything below 1.
        if masks.size and not np.isin(masks, (0, 1)).all():
            raise ValueError(
                f"{where}['masks'] must hold 0 and 1 only (binary masks); got values in "
                f"[{masks.min()}, {masks.max()}]"
            )
        out.append(
            {"boxes": boxes, "labels": labels.astype(np.int64), "masks": masks.astype(np.uint8)}
        )
    return out


# --- normalise and resize -------------------------------------------------------------


def normalize(image, mean, std) -> np.ndarray:
    """(image - mean) / std per channel; image (3, H, W) float, mean and std 3 numbers."""
    mean = np.asarray(mean, dtype=image.dtype)[:, None, None]
    std = np.asarray(std, dtype=image.dtype)[:, None, None]
    return (image - mean) / std


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """The factor that brings the short side to min_size, unless the long side passes max_size."""
    return min(min_size / min(height, width), max_size / max(height, width))


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(h, w) = floor(size * scale), as torch's interpolate with recompute_scale_factor,
    but at least 1 on each axis: with max_size 1333 a 5 x 10000 image scales by 0.1333 to
    floor(0.67) = 0 rows, which torch cannot resize to; here it becomes 1 x 1333."""
    scale = resize_scale(height, width, min_size, max_size)
    return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))


def resize_nearest(masks, size) -> np.ndarray:
    """Nearest resize of (G, H, W) to (G, h, w): output o reads floor(o * in / out).

    torch computes in/out in float32 for the masks it resizes; so do we, so that
    borders land on the same pixel.
    """
    out_h, out_w = size
    in_h, in_w = masks.shape[1:]

    def index(in_size, out_size):
        scale = np.float32(in_size) / np.float32(out_size)
        src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
        return np.minimum(src, in_size - 1)

    return masks[:, index(in_h, out_h)][:, :, index(in_w, out_w)]


def resize_boxes(boxes, original_size, new_size) -> np.ndarray:
    """Scale (G, 4) x1y1x2y2 boxes from an (H, W) frame to an (h, w) frame (float32)."""
    ratio_h = np.float32(new_size[0]) / np.float32(original_size[0])
    ratio_w = np.float32(new_size[1]) / np.float32(original_size[1])
    return (np.asarray(boxes, np.float32) * np.array([ratio_w, ratio_h, ratio_w, ratio_h])).astype(
        np.float32
    )


def batch_images(images, size_divisible: int = 32) -> np.ndarray:
    """Zero-pad (3, h_i, w_i) images at the bottom and right into one (N, 3, Hp, Wp) batch.

    Hp, Wp: the largest h and w rounded up to a multiple of size_divisible.
    """
    height = max(im.shape[1] for im in images)
    width = max(im.shape[2] for im in images)
    height = int(math.ceil(height / size_divisible) * size_divisible)
    width = int(math.ceil(width / size_divisible) * size_divisible)
    batch = np.zeros((len(images), 3, height, width), dtype=images[0].dtype)
    for i, image in enumerate(images):
        batch[i, :, : image.shape[1], : image.shape[2]] = image
    return batch


# --- the whole transform --------------------------------------------------------------


class Transform:
    """Normalise, resize, batch (and the way back), configured by a MaskRCNNConfig.

    ``transform(images, targets=None)`` returns ``(batch, image_sizes, targets)``:
        batch: (N, 3, Hp, Wp) in the images' dtype, normalised, padded with zeros.
        image_sizes: list of (h, w), each image's size after resizing (before padding);
            proposals and detections are clipped to it.
        targets: None, or the checked targets in the resized frame: boxes (G, 4)
            float32, labels (G,) int64, masks (G, h, w) uint8.
    """

    def __init__(self, cfg):
        self.min_size = cfg.min_size
        self.max_size = cfg.max_size
        self.image_mean = cfg.image_mean
        self.image_std = cfg.image_std
        self.size_divisible = cfg.size_divisible
        self.num_classes = cfg.num_classes

    def __call__(self, images, targets=None, checked=False):
        """checked: the images already passed ``check_images`` (the model checks them
        before casting them to its dtype), so they are not checked twice."""
        images = images if checked else check_images(images)
        original_sizes = [im.shape[1:] for im in images]
        if targets is not None:
            targets = check_targets(targets, original_sizes, self.num_classes)
        resized, image_sizes, new_targets = [], [], []
        for i, image in enumerate(images):
            size = resized_size(*image.shape[1:], self.min_size, self.max_size)
            image = normalize(image, self.image_mean, self.image_std)
            if size == image.shape[1:]:
                # At its own size the bilinear resize is the identity (every tap weight
                # is 1 or 0, and the images are finite), so only its dtype rule applies:
                # a 128 x 128 shapes image already has the shapes model's size.
                out_dtype = np.float64 if image.dtype == np.float64 else np.float32
                resized.append(image.astype(out_dtype, copy=False))
            else:
                resized.append(resize_bilinear(image, size))
            image_sizes.append(size)
            if targets is not None:
                target = dict(targets[i])
                target["boxes"] = resize_boxes(target["boxes"], original_sizes[i], size)
                target["masks"] = resize_nearest(target["masks"], size)
                new_targets.append(target)
        batch = batch_images(resized, self.size_divisible)
        return batch, image_sizes, (new_targets if targets is not None else None)

    def postprocess(self, detections, image_sizes, original_sizes):
        """Bring each image's detections from the resized frame to its original frame.

        detections: list of dicts with boxes (D, 4) in the resized frame and, optionally,
            masks (D, 1, M, M) float mask probabilities of each box.
        Returns the dicts with boxes scaled to (H, W) and masks pasted into
        (D, 1, H, W) full-image float32 probabilities.
        """
        out = []
        for det, size, original in zip(detections, image_sizes, original_sizes, strict=True):
            det = dict(det)
            det["boxes"] = resize_boxes(det["boxes"], size, original)
            if "masks" in det:
                det["masks"] = paste_masks_in_image(det["masks"], det["boxes"], original)
            out.append(det)
        return out
