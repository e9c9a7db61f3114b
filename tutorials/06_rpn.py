# %% [markdown]
# # Tutorial 06 — the Region Proposal Network: from anchors to a few hundred proposals.
#
# The RPN (Faster R-CNN §3.1) is a small convolutional head that slides over every level
# of the feature pyramid. At each location it looks at the A = 3 anchors there and
# predicts, for each, one *objectness* logit ("is there an object in this anchor?") and
# four deltas that would move the anchor onto that object.
#
# Training needs labels for the anchors: an anchor whose IoU with some ground-truth box is
# at least 0.7 is positive, below 0.3 negative, in between ignored; so that no object is
# left without a positive, each object's best anchor is positive whatever its IoU. A
# minibatch of 256 anchors, at most half positive, is scored with binary cross-entropy;
# the positives' deltas with smooth L1.
#
# At inference (and in training, to feed the RoI heads) the RPN proposes boxes: per level
# the top-scoring anchors are decoded, clipped to the image, tiny boxes dropped, and NMS
# at IoU 0.7 removes near-duplicates level by level; the best N over all levels remain.
#
# 1. Objectness on every level P2..P6 for one shapes image.
# 2. The anchors' labels: positive, negative, ignored, and the sampled minibatch.
# 3. The top proposals before and after NMS.
#
# The model: the small shapes model shipped with the package when it is there; otherwise
# a fresh one whose backbone and RPN are fitted to this one image for a few dozen steps
# (RPN losses only, some 10-30 s on a CPU) so that the maps show something.
#
# Run: ``python tutorials/06_rpn.py`` (figures go to ``figures/``).


# %%
import pathlib
import time

import matplotlib
import numpy as np

from tinymaskrcnn import nn
from tinymaskrcnn.boxes import BoxCoder, batched_nms, clip_boxes, remove_small_boxes
from tinymaskrcnn.config import MaskRCNNConfig
from tinymaskrcnn.data.shapes import ShapesDataset
from tinymaskrcnn.matching import BalancedPositiveNegativeSampler, Matcher
from tinymaskrcnn.model import MaskRCNN
from tinymaskrcnn.plotting import save
from tinymaskrcnn.plotting.matching import plot_anchor_labels
from tinymaskrcnn.plotting.rpn import plot_objectness_levels, plot_proposals_nms
from tinymaskrcnn.rpn import MIN_PROPOSAL_SIZE, anchor_targets, top_n_per_level

matplotlib.use("Agg")  # no window: every figure goes to a file

# A notebook has no __file__: it runs in its own folder, tutorials/.
HERE = pathlib.Path(__file__).resolve().parent if "__file__" in globals() else pathlib.Path.cwd()
FIGURES = HERE.parent / "figures"
TRAIN_STEPS = 60


# %%
def get_model(image, target):
    try:
        model = MaskRCNN.from_pretrained("shapes")
        print("   using the pretrained shapes model")
        return model
    except FileNotFoundError:
        pass
    print(
        f"   no pretrained shapes model: fitting backbone + RPN to this image, {TRAIN_STEPS} steps"
    )
    # A minibatch of 32 anchors rather than 256: this image has only two positive
    # anchors, which would otherwise weigh 2/256 of the loss and learn slowly.
    model = MaskRCNN(
        MaskRCNNConfig.shapes(rpn_batch_size_per_image=32), rng=np.random.default_rng(0)
    )
    params = [(n, p) for n, p in model.named_parameters() if n.startswith(("backbone", "rpn"))]
    opt = nn.SGD(params, lr=0.02, momentum=0.9, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for step in range(TRAIN_STEPS):
        batch, sizes, targets = model.transform([image], [target])
        _, losses = model.rpn(model.backbone(batch), sizes, batch.shape[2:], targets, rng=rng)
        model.zero_grad()
        model.backbone.backward(model.rpn.backward())
        opt.step()
        if step % 20 == 0 or step == TRAIN_STEPS - 1:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in losses.items())
            print(f"   step {step:2d}: {shown}")
    print(f"   ({time.perf_counter() - start:.1f} s)")
    return model


# %%
def run_rpn(model, image):
    """The RPN's raw outputs for one image: anchors, logits, deltas, sizes."""
    model.eval()
    if model.cfg.norm_layer == "batch_norm":
        # A few dozen steps are too few for batch norm's running averages to settle:
        # normalise with this image's own statistics, as during those steps.
        for module in model.backbone.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.train()
    batch, sizes, _ = model.transform([image])
    # The RPN reports its stages to a trace: keep what it saw.
    seen = {}
    with nn.no_grad():
        features = model.backbone(batch)
        model.rpn(
            features, sizes, batch.shape[2:], trace=lambda stage, **a: seen.setdefault(stage, a)
        )
    objectness, deltas = seen["rpn_head"]["objectness"], seen["rpn_head"]["deltas"]
    last = seen["anchors"]
    shapes = [f.shape[2:] for f in features]
    return (
        batch,
        sizes[0],
        last["anchors"],
        objectness[0],
        deltas[0],
        last["num_per_level"],
        shapes,
        seen,
    )


# %% [markdown]
# ## 1. Objectness on every level P2..P6 for one shapes image.
#
# ![06_objectness](../figures/06_objectness.png)


# %%
def step1_objectness(image, anchors_per_level, objectness, shapes, padded):
    print("1. Objectness per level (max over the 3 anchors of a location):")
    maps, strides, start = [], [], 0
    for level, ((h, w), count) in enumerate(zip(shapes, anchors_per_level, strict=True), start=2):
        logits = objectness[start : start + count].reshape(h, w, -1)
        prob = nn.sigmoid(logits.max(axis=2))
        start += count
        stride = padded[0] // h
        # the map covers the padded batch; show the part over the image
        crop = prob[
            : int(np.ceil(image.shape[1] / stride)), : int(np.ceil(image.shape[2] / stride))
        ]
        maps.append(crop)
        strides.append(stride)
        print(
            f"   P{level}: {h}x{w} locations x 3 anchors = {count:5d}; "
            f"max objectness {prob.max():.3f}, {np.sum(prob > 0.5)} locations above 0.5"
        )
    fig = plot_objectness_levels(image, maps, strides)
    print(f"   -> {save(fig, FIGURES / '06_objectness.png')}")


# %% [markdown]
# ## 2. The anchors' labels: positive, negative, ignored, and the sampled minibatch.
#
# ![06_anchor_labels](../figures/06_anchor_labels.png)


# %%
def step2_anchor_labels(image, target, anchors, num_per_level, cfg):
    print("2. Anchor labels (IoU >= 0.7 positive, < 0.3 negative, else ignored):")
    matcher = Matcher(cfg.rpn_fg_iou_thresh, cfg.rpn_bg_iou_thresh, allow_low_quality_matches=True)
    labels, _ = anchor_targets(anchors, target["boxes"], matcher)
    level = np.repeat(np.arange(len(num_per_level)), num_per_level)
    for lv in range(len(num_per_level)):
        counts = [np.sum((labels == v) & (level == lv)) for v in (1, 0, -1)]
        pos_, neg_, ign_ = counts
        print(f"   P{lv + 2}: {pos_:3d} positive, {neg_:5d} negative, {ign_:4d} ignored")
    sampler = BalancedPositiveNegativeSampler(
        cfg.rpn_batch_size_per_image, cfg.rpn_positive_fraction
    )
    pos, neg = sampler(labels, np.random.default_rng(0))
    print(
        f"   minibatch of {cfg.rpn_batch_size_per_image}: {pos.sum()} positive "
        f"(at most {int(cfg.rpn_batch_size_per_image * cfg.rpn_positive_fraction)}), "
        f"{neg.sum()} negative"
    )
    fig = plot_anchor_labels(
        image,
        target["boxes"],
        anchors,
        pos,
        neg,
        labels == -1,
        f"RPN minibatch of {cfg.rpn_batch_size_per_image}: {pos.sum()} positives and "
        f"{neg.sum()} negatives\n(ignored anchors, between the thresholds, are never sampled)",
        rng=np.random.default_rng(1),
        max_shown=40,
        thresholds=(cfg.rpn_fg_iou_thresh, cfg.rpn_bg_iou_thresh),
    )
    print(f"   -> {save(fig, FIGURES / '06_anchor_labels.png')}")


# %% [markdown]
# ## 3. The top proposals before and after NMS.
#
# ![06_proposals_nms](../figures/06_proposals_nms.png)


# %%
def step3_proposals(image, target, anchors, objectness, deltas, num_per_level, size, cfg, seen):
    print("3. Proposals: top-n per level, decode, clip, drop tiny boxes, NMS per level:")
    idx = top_n_per_level(objectness, num_per_level, cfg.rpn_pre_nms_top_n_test)
    level = np.repeat(np.arange(len(num_per_level)), num_per_level)[idx]
    boxes = clip_boxes(BoxCoder().decode(deltas[idx], anchors[idx]), size)
    scores = nn.sigmoid(objectness[idx])
    keep = remove_small_boxes(boxes, MIN_PROPOSAL_SIZE)
    boxes, scores, level = boxes[keep], scores[keep], level[keep]
    order = np.argsort(-scores, kind="stable")
    survivors = batched_nms(boxes, scores, level, cfg.rpn_nms_thresh)
    kept = survivors[: cfg.rpn_post_nms_top_n_test]
    # The steps spelled out above are the RPN's own: its forward reported the same boxes.
    assert np.array_equal(boxes, seen["proposal_candidates"]["boxes"][0])
    assert np.array_equal(boxes[kept], seen["proposals"]["boxes"][0])
    print(
        f"   {len(anchors)} anchors -> {len(idx)} after top-{cfg.rpn_pre_nms_top_n_test} per "
        f"level -> {len(boxes)} after clipping and size filter -> {len(survivors)} after NMS "
        f"-> {len(kept)} proposals (top {cfg.rpn_post_nms_top_n_test})"
    )
    n = 12
    removed_top = np.setdiff1d(order[:n], survivors)  # of the n best, those NMS removes
    print(f"   top {n} scores: {', '.join(f'{v:.3f}' for v in scores[order[:n]])}")
    print(
        f"   NMS removed {len(boxes) - len(survivors)} boxes, each overlapping a better one of "
        f"its level by IoU > {cfg.rpn_nms_thresh}; {len(removed_top)} of the top {n} are among "
        "them (dotted in the figure)"
    )
    fig = plot_proposals_nms(
        image,
        boxes[order[:n]],
        level[order[:n]],
        boxes[kept[:n]],
        level[kept[:n]],
        target["boxes"],
        cfg.rpn_nms_thresh,
        suppressed=~np.isin(order[:n], survivors),
    )
    print(f"   -> {save(fig, FIGURES / '06_proposals_nms.png')}")


# %%
def main():
    dataset = ShapesDataset(64, image_size=128, seed=6)
    image, target = dataset[0]
    print(f"Image 0 of the shapes dataset: {len(target['boxes'])} objects")
    model = get_model(image, target)
    cfg = MaskRCNNConfig.shapes()
    batch, size, anchors, objectness, deltas, num_per_level, shapes, seen = run_rpn(model, image)
    step1_objectness(image, num_per_level, objectness, shapes, batch.shape[2:])
    # the image is not resized (128 -> 128), so the targets are in the anchors' frame
    step2_anchor_labels(image, target, anchors, num_per_level, cfg)
    step3_proposals(image, target, anchors, objectness, deltas, num_per_level, size, cfg, seen)


# %% [markdown]
# Run every step (as `python tutorials/06_rpn.py` does).

# %%
if __name__ == "__main__":
    main()
