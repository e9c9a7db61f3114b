"""Matching anchors (or proposals) to ground truth, and sampling the training minibatch.

Faster R-CNN §3.1.2: an anchor is positive when its IoU with some ground-truth box is at
least 0.7, or when it is the best anchor of some ground-truth box (so that every box gets
an anchor, however odd its shape); negative below 0.3; ignored in between. The box head
uses 0.5 / 0.5 without the low-quality rule (Fast R-CNN §2.3). The sampler then draws a
fixed-size minibatch with at most a given fraction of positives (Faster R-CNN §3.1.3).

Shapes used below:
    G: ground-truth boxes of one image      N: anchors (or proposals) of that image
"""

from __future__ import annotations

import numpy as np


class Matcher:
    """Assign each of N candidates the index of a ground-truth box, or a negative code.

    high_threshold, low_threshold: IoU >= high is a match, IoU < low is background
    (``BELOW_LOW_THRESHOLD``), in between is ignored (``BETWEEN_THRESHOLDS``).
    allow_low_quality_matches: give back its best match to every candidate that is the
    best candidate of some ground-truth box (ties included), even below ``high``.
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold, low_threshold, allow_low_quality_matches=False):
        high, low = float(high_threshold), float(low_threshold)
        if not (0 <= low <= high) or not np.isfinite(high):
            raise ValueError(
                "thresholds must satisfy 0 <= low_threshold <= high_threshold; "
                f"got high_threshold={high_threshold}, low_threshold={low_threshold}"
            )
        self.high_threshold = high
        self.low_threshold = low
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __repr__(self) -> str:
        return (
            f"Matcher(high_threshold={self.high_threshold}, low_threshold={self.low_threshold}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )

    def __call__(self, iou):
        """Match candidates to ground truth.

        iou: (G, N) float, ``iou[g, n]`` the IoU of ground-truth box g with candidate n.
        Returns matches: (N,) int64, the matched gt index (>= 0), -1 (background) or -2
        (ignored). With G = 0 every candidate is background.
        """
        iou = np.asarray(iou)
        if iou.ndim != 2:
            raise ValueError(
                f"iou must be (G, N) [ground truth, candidates]; got shape {iou.shape}"
            )
        if iou.dtype.kind not in "fiu" or not np.isfinite(iou).all():
            raise ValueError(f"iou must be finite numbers; got dtype {iou.dtype} with NaN or inf")
        num_gt, num_candidates = iou.shape
        if num_gt == 0:
            return np.full(num_candidates, self.BELOW_LOW_THRESHOLD, dtype=np.int64)
        if num_candidates == 0:
            return np.zeros(0, dtype=np.int64)

        # Best gt per candidate; ties go to the lowest gt index (argmax, as torch.max on CPU).
        best_gt = iou.argmax(axis=0).astype(np.int64)
        best_iou = iou[best_gt, np.arange(num_candidates)]
        matches = best_gt.copy()
        matches[best_iou < self.low_threshold] = self.BELOW_LOW_THRESHOLD
        between = (best_iou >= self.low_threshold) & (best_iou < self.high_threshold)
        matches[between] = self.BETWEEN_THRESHOLDS

        if self.allow_low_quality_matches:
            # Every candidate that reaches some gt's highest IoU (all tied ones) gets back
            # its *own* best gt, which may be another gt than the one it is best for.
            # torchvision quirk kept on purpose: a gt overlapping nothing has highest IoU 0,
            # so every candidate with IoU 0 to it is restored to its best match too.
            best_per_gt = iou.max(axis=1, keepdims=True)
            rescued = (iou == best_per_gt).any(axis=0)
            matches[rescued] = best_gt[rescued]
        return matches


class BalancedPositiveNegativeSampler:
    """Draw a minibatch of at most ``batch_size_per_image`` candidates, at most
    ``positive_fraction`` of them positive; negatives fill the rest.

    RPN: 256 and 0.5. Box head: 512 and 0.25.
    """

    def __init__(self, batch_size_per_image, positive_fraction):
        if int(batch_size_per_image) != batch_size_per_image or batch_size_per_image < 0:
            raise ValueError(
                f"batch_size_per_image must be an integer >= 0; got {batch_size_per_image!r}"
            )
        if not 0 <= float(positive_fraction) <= 1:
            raise ValueError(f"positive_fraction must be in [0, 1]; got {positive_fraction!r}")
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)

    def __repr__(self) -> str:
        return (
            f"BalancedPositiveNegativeSampler(batch_size_per_image={self.batch_size_per_image}, "
            f"positive_fraction={self.positive_fraction})"
        )

    def __call__(self, labels, rng):
        """Sample one image's candidates.

        labels: (N,) int, >= 1 positive (a class), 0 negative, -1 ignored.
        rng: np.random.Generator; the only source of randomness.
        Returns (pos_mask, neg_mask): (N,) bool each, disjoint, chosen uniformly at random.
        """
        labels = np.asarray(labels)
        if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
            raise ValueError(
                f"labels must be (N,) int (>= 1 positive, 0 negative, -1 ignored); "
                f"got shape {labels.shape} {labels.dtype}"
            )
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a np.random.Generator; got {type(rng).__name__}")
        positive = np.flatnonzero(labels >= 1)
        negative = np.flatnonzero(labels == 0)
        num_pos = min(positive.size, int(self.batch_size_per_image * self.positive_fraction))
        num_neg = min(negative.size, self.batch_size_per_image - num_pos)
        pos_mask = np.zeros(labels.shape, dtype=bool)
        neg_mask = np.zeros(labels.shape, dtype=bool)
        pos_mask[rng.choice(positive, size=num_pos, replace=False)] = True
        neg_mask[rng.choice(negative, size=num_neg, replace=False)] = True
        return pos_mask, neg_mask


__all__ = ["BalancedPositiveNegativeSampler", "Matcher"]
