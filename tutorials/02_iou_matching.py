# %% [markdown]
# # Tutorial 02 — IoU and matching: which anchors should say "object here"?
#
# To train the RPN, every anchor needs a label. Faster R-CNN (§3.1.2) measures how well an
# anchor fits a ground-truth box with the intersection over union, IoU = area of overlap /
# area of union, a number in [0, 1] that is 1 only for identical boxes. Then:
#
# * IoU >= 0.7 with some ground-truth box: positive, matched to the box it overlaps most;
# * IoU < 0.3 with every box: negative (background);
# * in between: ignored, neither rewarded nor punished;
# * and the *low-quality* rule: the anchor(s) with the highest IoU for a ground-truth box
#   are positive even below 0.7 (ties included), so that no object is left without an
#   anchor because of its odd size or shape.
#
# Finally a minibatch of 256 anchors is drawn, at most half of them positive.
#
# 1. The IoU matrix between the ground-truth boxes and their best anchors.
# 2. The labels of every anchor of one image at 0.7 / 0.3.
# 3. The anchors the low-quality rule rescues.
# 4. The balanced sample of 256.
#
# Run: ``python tutorials/02_iou_matching.py`` (a few seconds; figures go to ``figures/``).


# %%
import pathlib

import matplotlib
import numpy as np

from tinymaskrcnn.anchors import AnchorGenerator
from tinymaskrcnn.boxes import box_iou
from tinymaskrcnn.data.shapes import ShapesDataset
from tinymaskrcnn.matching import BalancedPositiveNegativeSampler, Matcher
from tinymaskrcnn.plotting import save
from tinymaskrcnn.plotting.matching import (
    plot_anchor_labels,
    plot_iou_matrix,
    plot_low_quality_rescue,
)

matplotlib.use("Agg")  # no window: every figure goes to a file

# A notebook has no __file__: it runs in its own folder, tutorials/.
HERE = pathlib.Path(__file__).resolve().parent if "__file__" in globals() else pathlib.Path.cwd()
FIGURES = HERE.parent / "figures"
IMAGE_SIZE = 256
STRIDES = (4, 8, 16, 32, 64)


# %%
def anchor_names(generator, feature_sizes, indices):
    """'#index Pk wxh' for anchors of the concatenated list."""
    counts = np.cumsum([h * w * 3 for h, w in feature_sizes])
    anchors = generator((IMAGE_SIZE, IMAGE_SIZE), feature_sizes)
    names = []
    for i in indices:
        level = int(np.searchsorted(counts, i, side="right"))
        w, h = anchors[i, 2] - anchors[i, 0], anchors[i, 3] - anchors[i, 1]
        names.append(f"#{i} P{level + 2} {w:.0f}x{h:.0f}")
    return names


# %%
def main():
    image, target = ShapesDataset(1, image_size=IMAGE_SIZE, seed=2)[0]
    gt = target["boxes"]
    names = [
        f"gt {g} ({ShapesDataset.CLASSES[int(label)]})" for g, label in enumerate(target["labels"])
    ]
    generator = AnchorGenerator()
    feature_sizes = [(IMAGE_SIZE // s, IMAGE_SIZE // s) for s in STRIDES]
    anchors = generator((IMAGE_SIZE, IMAGE_SIZE), feature_sizes)
    iou = box_iou(gt, anchors)
    print(f"{len(gt)} ground-truth boxes, {len(anchors):,} anchors, IoU matrix {iou.shape}")

    print("1. Best anchors of each ground-truth box:")
    best = np.unique(np.argsort(-iou, axis=1)[:, :4])
    for g in range(len(gt)):
        print(f"   {names[g]} {gt[g].tolist()}: highest IoU {iou[g].max():.3f}")
    fig = plot_iou_matrix(
        iou[:, best],
        names,
        anchor_names(generator, feature_sizes, best),
        "IoU of each ground-truth box with the 4 best anchors of every box",
    )
    print(f"   -> {save(fig, FIGURES / '02_iou_matrix.png')}")

    print("2. Labels at 0.7 / 0.3 with low-quality matches (the RPN's matcher):")
    rpn_matcher = Matcher(0.7, 0.3, allow_low_quality_matches=True)
    matches = rpn_matcher(iou)
    for code, name in ((-1, "negative"), (-2, "ignored")):
        print(f"   {name}: {(matches == code).sum():,}")
    for g in range(len(gt)):
        print(f"   positive for {names[g]}: {(matches == g).sum()}")
    fig = plot_anchor_labels(
        image,
        gt,
        anchors,
        matches >= 0,
        matches == Matcher.BELOW_LOW_THRESHOLD,
        matches == Matcher.BETWEEN_THRESHOLDS,
        "Anchor labels: IoU >= 0.7 positive, < 0.3 negative",
        rng=np.random.default_rng(0),
    )
    print(f"   -> {save(fig, FIGURES / '02_anchor_labels.png')}")

    print("3. Anchors positive only thanks to the low-quality rule:")
    plain = Matcher(0.7, 0.3, allow_low_quality_matches=False)(iou)
    rescued = (plain < 0) & (matches >= 0)
    for i in np.flatnonzero(rescued):
        print(
            f"   anchor #{i} {anchors[i].tolist()}: IoU {iou[:, i].max():.3f} with gt "
            f"{matches[i]} (was {'ignored' if plain[i] == -2 else 'negative'})"
        )
    fig = plot_low_quality_rescue(
        image,
        gt,
        anchors,
        rescued,
        iou.max(axis=0),
        "Rescued: best anchors of a box that no anchor covers at IoU 0.7",
    )
    print(f"   -> {save(fig, FIGURES / '02_low_quality.png')}")

    print("4. A balanced minibatch of 256 anchors, at most half positive:")
    labels = np.where(matches >= 0, 1, np.where(matches == -1, 0, -1))
    pos, neg = BalancedPositiveNegativeSampler(256, 0.5)(labels, np.random.default_rng(0))
    print(
        f"   {pos.sum()} positive + {neg.sum()} negative = {pos.sum() + neg.sum()} "
        f"(of {(labels == 1).sum()} positive and {(labels == 0).sum():,} negative anchors)"
    )


# %% [markdown]
# Run every step (as `python tutorials/02_iou_matching.py` does).

# %%
if __name__ == "__main__":
    main()
