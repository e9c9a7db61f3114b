"""Batches for training, and the one augmentation of torchvision's Mask R-CNN recipe.

Shapes used below:
    H, W: image height and width
    G:    objects of one image
    B:    images in a batch

Images keep their own sizes in a batch (a list, not one array): resizing and padding
them into one (B, 3, H, W) array is the model's transform (transform.py), as in
torchvision, so that boxes stay in each image's own pixels until then.
"""

from __future__ import annotations

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


def iterate_batches(dataset, batch_size, rng, shuffle=True, hflip=True, drop_last=False):
    """One epoch of ``dataset`` in batches: yields (images, targets), lists of length B.

    rng:     np.random.Generator for the order and the flips.
    shuffle: visit the images in a random order (else 0, 1, 2, ...).
    hflip:   mirror each image and its target with probability 0.5, the one
             augmentation of torchvision's Mask R-CNN recipe.
    drop_last: leave out a last batch smaller than ``batch_size``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator; got {type(rng).__name__}")
    if len(dataset) == 0:
        raise ValueError("dataset is empty: there are no batches to make")
    order = rng.permutation(len(dataset)) if shuffle else np.arange(len(dataset))
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        if drop_last and len(chosen) < batch_size:
            return
        images, targets = [], []
        for i in chosen:
            image, target = dataset[int(i)]
            if hflip and rng.random() < 0.5:
                image, target = flip_horizontal(image, target)
            images.append(image)
            targets.append(target)
        yield images, targets
