"""The synthetic shapes dataset: squares, circles and triangles on a plain background.

A toy detection and segmentation task small enough to train a Mask R-CNN on a laptop
(docs/architecture.md, Data; the same idea as the "shapes" sample of the matterport Keras
implementation), yet with everything the real task has: several objects per image,
classes, boxes, and masks that overlap.

Shapes used below:
    H, W: image height and width (default 128 x 128)
    G:    shapes kept in one image (1 to 4)

The specification (docs/architecture.md, Data), with the choices it leaves open made here:

* Classes 1 square, 2 circle, 3 triangle (0 is background): ``CLASSES``.
* A background of one random colour; each shape one random colour that differs from
  the background and from the earlier shapes by at least ``MIN_COLOUR_DISTANCE``
  (Euclidean distance of RGB in [0, 1]), so that every boundary is visible.
  Colours are multiples of 1/255, so an image survives a round trip through 8-bit PNG
  exactly (data/coco.py relies on that).
* 1 to 4 shapes are proposed per image; a proposed shape is dropped when the box of
  its whole outline (before clipping to the image) overlaps that of an earlier kept
  shape at IoU > 0.3.
* Half-size 20 to 31 px at 128 x 128 (a float, uniform), centre at least 20 px from
  every border; both scale with ``min(H, W) / 128``. Half-size is half the side of a
  square, the radius of a circle, half the height of a triangle.
* Squares and triangles (equilateral, apex up when unrotated) are rotated about their
  centre by a uniform random angle when ``rotate=True`` (the default), so that a model
  trained here also meets upright and tilted shapes drawn by any generator of the spec.
  ``rotate=False`` draws them axis-aligned and apex up.
* Later shapes are drawn on top. Masks are occlusion-aware: a shape's mask holds only
  the pixels where it is visible. A shape left with less than ``MIN_VISIBLE_FRACTION``
  of its in-image area visible is dropped (image and target both), since neither a
  person nor a model could tell what it was. Dropping only uncovers pixels of the
  shapes below, so one pass suffices, and the top shape is never dropped: G >= 1.
* Boxes are the tight boxes of the visible masks (x1, y1 of the first pixel, x2, y2 one
  past the last: pixel (i, j) covers [j, j+1) x [i, i+1),
  docs/architecture.md, Frames and pixels).
* Rasterisation without antialiasing: a pixel belongs to a shape when its centre
  (j + 0.5, i + 0.5) lies inside, so pixels and masks agree exactly.
* Image i is drawn from ``np.random.default_rng([seed, i])``: ``ds[i]`` does not depend
  on which images were drawn before it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

MIN_COLOUR_DISTANCE = 0.35
MIN_VISIBLE_FRACTION = 0.25
OVERLAP_IOU = 0.3
# Lengths of the spec at 128 x 128, scaled with min(H, W) / 128.
_REFERENCE_SIZE = 128
_HALF_SIZE_RANGE = (20.0, 31.0)
_BORDER_MARGIN = 20.0


class Shape(NamedTuple):
    """One drawn shape, in image pixels.

    label:     1 square, 2 circle, 3 triangle.
    centre:    (x, y) float.
    half_size: half the side (square), the radius (circle), half the height (triangle).
    angle:     rotation about the centre in radians, counter-clockwise on screen
               (0 for circles).
    colour:    (r, g, b) floats in [0, 1], multiples of 1/255.
    """

    label: int
    centre: tuple[float, float]
    half_size: float
    angle: float
    colour: tuple[float, float, float]


class ShapesDataset:
    """``ds[i] -> (image, target)``, deterministic from ``seed`` and ``i``.

    num_images: number of images (>= 1).
    image_size: int (square images) or (H, W); at least 32 px each side.
    seed:       non-negative int; the same seed gives the same images.
    rotate:     rotate squares and triangles by random angles (see the module docstring).

    image:  (3, H, W) float32 RGB in [0, 1].
    target: {"boxes": (G, 4) float32 x1y1x2y2 pixels of the tight box of each visible mask,
             "labels": (G,) int64 in {1, 2, 3},
             "masks": (G, H, W) uint8 in {0, 1}, visible pixels only};
            shapes in drawing order (bottom first), G >= 1.
    """

    CLASSES = ("background", "square", "circle", "triangle")

    def __init__(self, num_images, image_size=128, seed=0, rotate=True):
        if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)):
            raise ValueError(f"num_images must be a positive int; got {num_images!r}")
        if num_images < 1:
            raise ValueError(f"num_images must be a positive int; got {num_images}")
        self.num_images = int(num_images)
        self.image_size = _check_image_size(image_size)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int; got {seed!r}")
        self.seed = int(seed)
        self.rotate = bool(rotate)

    def __len__(self):
        return self.num_images

    def __getitem__(self, i):
        background, shapes, full = self._recipe(i)
        return _draw(background, shapes, full)

    def describe(self, i):
        """The drawing recipe of image ``i``: ``(background (3,) float, [Shape, ...])``.

        Only the shapes that survive the overlap and visibility rules, bottom first, so
        ``render(*ds.describe(i), ds.image_size)`` equals ``ds[i]``.
        """
        background, shapes, _ = self._recipe(i)
        return background, shapes

    def _recipe(self, i):
        """``describe``'s pair and the kept shapes' whole (G, H, W) bool masks, which
        ``__getitem__`` draws with instead of rasterising them a second time."""
        i = self._check_index(i)
        rng = np.random.default_rng([self.seed, i])
        height, width = self.image_size
        scale = min(height, width) / _REFERENCE_SIZE
        background = _random_colour(rng, avoid=[], min_distance=0.0)

        shapes, boxes = [], []
        for _ in range(rng.integers(1, 5)):
            label = int(rng.integers(1, 4))
            half_size = float(rng.uniform(*_HALF_SIZE_RANGE)) * scale
            margin = _BORDER_MARGIN * scale
            centre = (
                float(rng.uniform(margin, width - margin)),
                float(rng.uniform(margin, height - margin)),
            )
            angle = float(rng.uniform(0.0, 2.0 * np.pi)) if self.rotate and label != 2 else 0.0
            colour = _random_colour(
                rng,
                avoid=[background] + [s.colour for s in shapes],
                min_distance=MIN_COLOUR_DISTANCE,
            )
            shape = Shape(label, centre, half_size, angle, colour)
            box = _outline_box(shape)
            if boxes and _iou(box, np.array(boxes)).max() > OVERLAP_IOU:
                continue
            shapes.append(shape)
            boxes.append(box)

        full = np.stack([rasterise(s, self.image_size) for s in shapes])
        visible = _visible_masks(full)
        kept = visible.sum(axis=(1, 2)) >= MIN_VISIBLE_FRACTION * full.sum(axis=(1, 2))
        return background, [s for s, k in zip(shapes, kept, strict=True) if k], full[kept]

    def _check_index(self, i):
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"ShapesDataset index must be an int; got {type(i).__name__}")
        if not -self.num_images <= i < self.num_images:
            raise IndexError(f"image index {i} out of range for {self.num_images} images")
        return int(i) % self.num_images


def render(background, shapes, image_size):
    """Draw ``shapes`` (bottom first) on a plain ``background``.

    background: (3,) RGB floats in [0, 1].
    shapes:     list of Shape, at least one.
    image_size: (H, W).
    Returns (image (3, H, W) float32, target) as documented on ShapesDataset; the
    shapes' masks are occlusion-aware, boxes are tight around the visible pixels.
    """
    return _draw(background, shapes, np.stack([rasterise(s, image_size) for s in shapes]))


def _draw(background, shapes, full):
    """``render`` with the shapes' whole masks ``full`` (G, H, W) bool already rasterised."""
    _, height, width = full.shape
    masks = _visible_masks(full)
    image = np.empty((3, height, width), np.float32)
    image[:] = np.asarray(background, np.float32)[:, None, None]
    for shape, mask in zip(shapes, masks, strict=True):
        np.copyto(image, np.asarray(shape.colour, np.float32)[:, None, None], where=mask)
    target = {
        "boxes": masks_to_boxes(masks),
        "labels": np.array([s.label for s in shapes], np.int64),
        "masks": masks.astype(np.uint8),
    }
    return image, target


def rasterise(shape, image_size):
    """(H, W) bool: the pixels whose centre lies inside ``shape`` (no antialiasing)."""
    height, width = image_size
    mask = np.zeros((height, width), bool)
    # Only pixels near the outline's box can be inside, so the tests below run on that
    # window alone (a 2-pixel margin: outside it every pixel centre is over a pixel
    # away, far beyond rounding). Each pixel gets the same arithmetic on the same
    # centre as over the whole grid, hence the same answer.
    left, top, right, bottom = _outline_box(shape)
    c0, c1 = _window(left, right, width)
    r0, r1 = _window(top, bottom, height)
    if c0 >= c1 or r0 >= r1:
        return mask
    xs = np.arange(c0, c1)[None, :] + 0.5
    ys = np.arange(r0, r1)[:, None] + 0.5
    cx, cy = shape.centre
    if shape.label == 2:
        mask[r0:r1, c0:c1] = (xs - cx) ** 2 + (ys - cy) ** 2 <= shape.half_size**2
        return mask
    inside = mask[r0:r1, c0:c1]
    inside[:] = True
    corners = _corners(shape)
    # A convex polygon with counter-clockwise corners (on screen, y down): a point is
    # inside when it lies left of every edge.
    for (x0, y0), (x1, y1) in zip(corners, np.roll(corners, -1, axis=0), strict=True):
        inside &= (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0) <= 0
    return mask


def _window(low, high, size):
    """[start, stop) of the pixels, of ``size``, whose centres lie within 2 px of
    [low, high]; all of them when the outline is NaN (then the tests decide alone)."""
    if not low <= high:
        return 0, size
    return int(np.clip(np.floor(low) - 2, 0, size)), int(np.clip(np.ceil(high) + 2, 0, size))


def masks_to_boxes(masks):
    """Tight boxes around binary masks.

    masks: (G, H, W) bool or {0, 1}; every mask must have at least one pixel.
    Returns (G, 4) float32 x1y1x2y2 pixels: x1, y1 the first pixel's corner, x2, y2 one
    past the last pixel (docs/architecture.md, Frames and pixels: width = x2 - x1 =
    number of columns touched).
    """
    masks = np.asarray(masks)
    boxes = np.zeros((masks.shape[0], 4), np.float32)
    for g, mask in enumerate(masks):
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            raise ValueError(f"masks[{g}] is empty; a box needs at least one pixel")
        boxes[g] = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
    return boxes


def _corners(shape):
    """(P, 2) corners (x, y) of a square or triangle, counter-clockwise on screen."""
    r = shape.half_size
    if shape.label == 1:
        corners = np.array([[-r, -r], [-r, r], [r, r], [r, -r]])
    else:
        # Equilateral, height 2r, apex up, centred on its box (not on its centroid),
        # so an unrotated triangle's box is exactly centre +- (side / 2, r).
        half_side = 2.0 * r / np.sqrt(3.0)
        corners = np.array([[0.0, -r], [-half_side, r], [half_side, r]])
    # Counter-clockwise on screen is clockwise in y-down coordinates.
    c, s = np.cos(shape.angle), np.sin(shape.angle)
    rotated = corners @ np.array([[c, -s], [s, c]])
    return rotated + np.asarray(shape.centre)


def _outline_box(shape):
    """(4,) x1y1x2y2 box of the whole outline (before clipping and occlusion)."""
    if shape.label == 2:
        cx, cy = shape.centre
        r = shape.half_size
        return np.array([cx - r, cy - r, cx + r, cy + r])
    corners = _corners(shape)
    return np.concatenate([corners.min(axis=0), corners.max(axis=0)])


def _iou(box, boxes):
    """IoU of one (4,) box with (N, 4) boxes (kept here so data/ needs no model code)."""
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / (area + areas - inter)


def _visible_masks(full):
    """(G, H, W) bool: each shape's pixels not covered by a later (higher) shape."""
    visible = np.empty_like(full)
    covered = np.zeros(full.shape[1:], bool)  # by the shapes above the current one
    for g in range(len(full) - 1, -1, -1):
        np.logical_and(full[g], ~covered, out=visible[g])
        covered |= full[g]
    return visible


def _random_colour(rng, avoid, min_distance, tries=64):
    """An RGB colour (multiples of 1/255) at least ``min_distance`` from every ``avoid``.

    Rejection sampling from a fixed number of candidates keeps the draw deterministic;
    if none qualifies (practically never for up to five colours) the candidate farthest
    from the others is taken.
    """
    candidates = rng.integers(0, 256, size=(tries, 3)) / 255.0
    if not avoid:
        return tuple(float(v) for v in candidates[0])
    distance = np.linalg.norm(candidates[:, None, :] - np.array(avoid)[None], axis=2).min(axis=1)
    ok = np.flatnonzero(distance >= min_distance)
    best = ok[0] if ok.size else int(np.argmax(distance))
    return tuple(float(v) for v in candidates[best])


def _check_image_size(image_size):
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if is_int(image_size):
        size = (int(image_size), int(image_size))
    elif (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(is_int(v) for v in image_size)
    ):
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise ValueError(f"image_size must be an int or (H, W) ints; got {image_size!r}")
    if min(size) < 32:
        raise ValueError(f"image_size must be at least 32 px each side; got {size}")
    return size
