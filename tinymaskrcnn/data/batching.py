"""The one augmentation of torchvision's Mask R-CNN recipe: horizontal flips.

Shapes used below:
    H, W: image height and width
    G:    objects of one image
    B:    images in a batch

``examples_at`` picks the images of given positions of a run's sequence of epochs and
flips them (train.py ``batch_at`` takes a step's positions, each data-parallel worker
its share of them). Images keep their own sizes in a batch (a list, not one array): resizing
and padding them into one (B, 3, H, W) array is the model's transform (transform.py),
as in torchvision, so that boxes stay in each image's own pixels until then.
"""

from __future__ import annotations

import functools

import numpy as np


def flip_horizontal(image, target):
    """Mirror an image and its target left to right (new arrays; inputs untouched).

    image:  (3, H, W), any dtype.
    target: {"boxes": (G, 4) x1y1x2y2 pixels, "masks": (G, H, W), anything else
             (labels) passed through}.
    Returns the mirrored (image, target), same shapes and dtypes. A box [x1, x2)
    becomes [W - x2, W - x1): pixel column j goes to W - 1 - j, whose span
    [W - 1 - j, W - j) is the mirror of [j, j + 1).
    """
    width = image.shape[-1]
    boxes = np.asarray(target["boxes"])
    flipped = dict(target)
    flipped["boxes"] = np.stack(
        [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1
    ).astype(boxes.dtype)
    flipped["masks"] = np.ascontiguousarray(np.asarray(target["masks"])[..., ::-1])
    return np.ascontiguousarray(image[..., ::-1]), flipped


def examples_at(dataset, positions, seed, hflip=True):
    """(images, targets) at ``positions`` (ints) of the epochs laid end to end.

    Epoch e visits ``dataset`` in the order of
    ``np.random.default_rng([seed, e]).permutation(len(dataset))`` and flips the image at
    each position with probability 0.5 (the same generator, after the permutation).
    """
    n = len(dataset)
    images, targets = [], []
    for position in positions:
        epoch, k = divmod(position, n)
        order, flips = _epoch(int(seed), epoch, n)
        image, target = dataset[int(order[k])]
        if hflip and flips[k]:
            image, target = flip_horizontal(image, target)
        images.append(image)
        targets.append(target)
    return images, targets


@functools.lru_cache(maxsize=2)
def _epoch(seed: int, epoch: int, n: int):
    """(order (n,) int64, flips (n,) bool) of epoch ``epoch``, read-only.

    Kept for the next calls: a run's steps draw from one epoch (two at its end) for
    thousands of steps, and drawing 100 000 positions and coins took longer than
    rendering the batch's images.
    """
    rng = np.random.default_rng([seed, epoch])
    order, flips = rng.permutation(n), rng.random(n) < 0.5
    order.flags.writeable = False
    flips.flags.writeable = False
    return order, flips
