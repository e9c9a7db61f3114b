# %% [markdown]
# # Tutorial 03 — box coding and NMS: from anchors to proposals.
#
# The RPN does not predict boxes in pixels. For each anchor it predicts four *deltas*
# (Faster R-CNN eq. 2): the shift of the centre measured in anchor widths and heights,
# and the log of the ratio of the sizes,
#
#     dx = (gx - ax) / aw     dy = (gy - ay) / ah     dw = log(gw / aw)     dh = log(gh / ah)
#
# which makes the targets independent of the anchor's scale. The box head uses the same
# coding with weights (10, 10, 5, 5) multiplying the deltas, to bring them to about unit
# variance. Decoding inverts the formulas; it clamps dw and dh at log(1000 / 16) first,
# so that a wild prediction early in training cannot produce an infinite box.
#
# Many anchors around an object all decode to boxes on it. Non-maximum suppression (NMS)
# keeps the best-scoring one and drops every box overlapping it by IoU > 0.7 (the RPN's
# threshold), then repeats with the best remaining box.
#
# 1. The deltas between one anchor and one box, with both weight sets.
# 2. Decoding and its clamp.
# 3. Proposals of a mock RPN on a shapes image, before and after NMS.
#
# Run: ``python tutorials/03_box_coding.py`` (a few seconds; figures go to ``figures/``).


# %%
import pathlib

import matplotlib
import numpy as np

from tinymaskrcnn.anchors import AnchorGenerator
from tinymaskrcnn.boxes import BBOX_XFORM_CLIP, BoxCoder, box_iou, clip_boxes, nms
from tinymaskrcnn.data.shapes import ShapesDataset
from tinymaskrcnn.plotting import save
from tinymaskrcnn.plotting.boxes import plot_box_deltas, plot_decode_clip, plot_nms

matplotlib.use("Agg")  # no window: every figure goes to a file

# A notebook has no __file__: it runs in its own folder, tutorials/.
HERE = pathlib.Path(__file__).resolve().parent if "__file__" in globals() else pathlib.Path.cwd()
FIGURES = HERE.parent / "figures"
IMAGE_SIZE = 256
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
HEAD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


# %% [markdown]
# ## 1. The deltas between one anchor and one box, with both weight sets.
#
# ![03_deltas](../figures/03_deltas.png)


# %%
def step1_deltas():
    anchor = np.array([[96.0, 16.0, 224.0, 144.0]])  # a P4 anchor, 128 x 128
    box = np.array([[165.0, 36.0, 256.0, 144.0]])  # the triangle of tutorial 02
    print(f"1. anchor {anchor[0].tolist()} -> box {box[0].tolist()}")
    deltas = {}
    for name, weights in (("RPN (1, 1, 1, 1)", RPN_WEIGHTS), ("head (10, 10, 5, 5)", HEAD_WEIGHTS)):
        coder = BoxCoder(weights)
        d = coder.encode(box, anchor)
        back = coder.decode(d, anchor)
        deltas[name] = d[0]
        print(f"   {name:20s} deltas {np.round(d[0], 4).tolist()}, decoded back {back[0].tolist()}")
    fig = plot_box_deltas(anchor[0], box[0], deltas)
    print(f"   -> {save(fig, FIGURES / '03_deltas.png')}")


# %% [markdown]
# ## 2. Decoding and its clamp.
#
# ![03_decode_clip](../figures/03_decode_clip.png)


# %%
def step2_clip():
    anchor = np.array([[0.0, 0.0, 16.0, 16.0]])
    print(f"2. Decoding clamps dw, dh at log(1000/16) = {BBOX_XFORM_CLIP:.4f}:")
    for dw in (1.0, 4.0, 10.0, 100.0):
        box = BoxCoder().decode(np.array([[0.0, 0.0, dw, 0.0]]), anchor)[0]
        print(
            f"   dw = {dw:5.1f}: width {box[2] - box[0]:8.1f} "
            f"(unclamped exp(dw) * 16 = {np.exp(dw) * 16:.3g})"
        )
    fig = plot_decode_clip(np.linspace(-2, 8, 400), BBOX_XFORM_CLIP, 16.0)
    print(f"   -> {save(fig, FIGURES / '03_decode_clip.png')}")


# %% [markdown]
# ## 3. Proposals of a mock RPN on a shapes image, before and after NMS.
#
# ![03_nms](../figures/03_nms.png)


# %%
def step3_nms(rng):
    image, target = ShapesDataset(1, image_size=IMAGE_SIZE, seed=2)[0]
    gt = target["boxes"]
    feature_sizes = [(IMAGE_SIZE // s, IMAGE_SIZE // s) for s in (4, 8, 16, 32, 64)]
    anchors = AnchorGenerator()((IMAGE_SIZE, IMAGE_SIZE), feature_sizes)
    # A mock RPN: deltas that point at the matched box with some error, as a half-trained
    # network gives, and an objectness that tracks how well the decoded box fits.
    iou = box_iou(gt, anchors)
    best = iou.argmax(axis=0)
    near = np.flatnonzero(iou.max(axis=0) > 0.3)
    coder = BoxCoder()
    deltas = coder.encode(gt[best[near]], anchors[near]) + rng.normal(0, 0.12, (len(near), 4))
    decoded = clip_boxes(coder.decode(deltas, anchors[near]), (IMAGE_SIZE, IMAGE_SIZE))
    fit = box_iou(decoded, gt)[np.arange(len(near)), best[near]]
    objectness = np.clip(0.9 * fit + rng.normal(0, 0.05, len(near)), 0, 1)
    top = np.argsort(-objectness, kind="stable")[:150]  # the pre-NMS top-n, scaled down
    proposals, scores = decoded[top], objectness[top]
    keep = nms(proposals, scores, 0.7)
    print(
        f"3. {len(anchors):,} anchors, {len(near)} near an object -> decoded, clipped -> top "
        f"{len(top)} by objectness -> NMS at 0.7 keeps {len(keep)}:"
    )
    for k in keep[:8]:
        overlap = box_iou(proposals[k : k + 1], gt).max()
        print(
            f"   score {scores[k]:.3f} box {np.round(proposals[k], 1).tolist()} "
            f"(IoU with its object {overlap:.2f})"
        )
    fig = plot_nms(image, proposals, scores, keep, 0.7, gt_boxes=gt)
    print(f"   -> {save(fig, FIGURES / '03_nms.png')}")


# %%
def main():
    step1_deltas()
    step2_clip()
    step3_nms(np.random.default_rng(0))


# %% [markdown]
# Run every step (as `python tutorials/03_box_coding.py` does).

# %%
if __name__ == "__main__":
    main()
