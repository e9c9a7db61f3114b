# %% [markdown]
# # Tutorial 07 — the mask head: targets, per-class masks, the loss, and pasting back.
#
# Mask R-CNN adds one small fully convolutional branch to Faster R-CNN (§3): for every
# positive RoI it reads 14 x 14 features with RoIAlign, runs four 3x3 convolutions, a
# 2x2 transposed convolution up to 28 x 28, and a 1x1 convolution to one 28 x 28 mask
# *per class*.
#
# The target of a RoI is its object's full-image binary mask resampled onto the RoI:
# RoIAlign of the mask itself, so pixels at the object's edge get fractional values.
# The loss is a per-pixel binary cross-entropy on the channel of the gt class only: the
# other classes' masks receive no gradient, so classes never compete for a pixel and
# the box head alone decides the class (the paper's "decoupling", Table 2b). The
# alternative — a softmax over classes at every pixel — makes them compete.
#
# At inference the mask of the predicted class goes through a sigmoid and is pasted
# back at the detection's box: the 28 x 28 grid is padded by one pixel, the box grown
# to match, the mask resized bilinearly to the box's pixels and placed in the image.
#
# 1. A gt mask, a proposal over it, and the proposal's 28 x 28 soft target.
# 2. The head's per-class masks after fitting it to this one RoI (only the gt class's
#    output filter learns; the shared layers below it learn for every class).
# 3. Sigmoid and softmax losses on the same logits: which channels get a gradient.
# 4. Pasting the predicted mask back into the image.
#
# Run: ``python tutorials/07_mask_head_and_loss.py`` (seconds; figures go to ``figures/``).


# %%
import pathlib

import matplotlib
import numpy as np

from tinymaskrcnn import nn
from tinymaskrcnn.config import MaskRCNNConfig
from tinymaskrcnn.data.shapes import ShapesDataset
from tinymaskrcnn.losses import MASK_LOSSES
from tinymaskrcnn.masks import expand_boxes, paste_masks_in_image, project_masks_on_boxes
from tinymaskrcnn.model import MaskRCNN
from tinymaskrcnn.plotting import save
from tinymaskrcnn.plotting.masks import (
    plot_class_masks,
    plot_mask_target,
    plot_paste,
    plot_sigmoid_vs_softmax,
)

matplotlib.use("Agg")  # no window: every figure goes to a file

# A notebook has no __file__: it runs in its own folder, tutorials/.
HERE = pathlib.Path(__file__).resolve().parent if "__file__" in globals() else pathlib.Path.cwd()
FIGURES = HERE.parent / "figures"
FIT_STEPS = 60


# %% [markdown]
# ## 1. A gt mask, a proposal over it, and the proposal's 28 x 28 soft target.
#
# ![07_mask_target](../figures/07_mask_target.png)


# %%
def step1_target(image, target, k):
    gt_mask = target["masks"][k]
    box = target["boxes"][k]
    # a proposal that is a little off, as RPN proposals are
    proposal = (box + np.array([-6.0, 4.0, 3.0, 9.0], np.float32)).clip(0, image.shape[1])
    mask_target = project_masks_on_boxes(target["masks"], proposal[None], np.array([k]), 28)[0]
    soft = np.mean((mask_target > 0) & (mask_target < 1))
    print(f"1. Object {k} ({ShapesDataset.CLASSES[target['labels'][k]]}), gt box {box.round(1)}")
    print(f"   proposal {proposal.round(1)} -> 28x28 target, mean {mask_target.mean():.3f},")
    print(f"   {soft:.0%} of its pixels fractional (the object's edge, resampled by RoIAlign)")
    fig = plot_mask_target(image, gt_mask, proposal, mask_target)
    print(f"   -> {save(fig, FIGURES / '07_mask_target.png')}")
    return proposal, mask_target


# %% [markdown]
# ## 2. The head's per-class masks after fitting it to this one RoI (only the gt class's output
# filter learns; the shared layers below it learn for every class).
#
# ![07_per_class_masks](../figures/07_per_class_masks.png)


# %%
def step2_fit_head(model, image, proposal, label, mask_target):
    heads = model.roi_heads
    batch, sizes, _ = model.transform([image])
    with nn.no_grad():
        features = model.backbone.eval()(batch)[:4]
    roi_features = heads.mask_roi_pool(features, [proposal[None]], sizes)
    print(f"2. RoIAlign features {roi_features.shape} -> mask head -> logits (1, C, 28, 28)")
    params = list(heads.mask_head.named_parameters()) + list(
        heads.mask_predictor.named_parameters()
    )
    opt = nn.SGD(params, lr=0.01, momentum=0.9, weight_decay=0.0)
    loss_fn, loss_backward = MASK_LOSSES["sigmoid"]
    labels = np.array([label])
    last_layer = heads.mask_predictor.mask_fcn_logits.weight
    filters_before = last_layer.data.copy()
    for step in range(FIT_STEPS):
        logits = heads.mask_predictor(heads.mask_head(roi_features))
        loss = loss_fn(logits, labels, mask_target[None])
        heads.mask_head.zero_grad()
        heads.mask_predictor.zero_grad()
        grad = loss_backward(logits, labels, mask_target[None])
        heads.mask_head.backward(heads.mask_predictor.backward(grad))
        opt.step()
        if step % 20 == 0 or step == FIT_STEPS - 1:
            print(f"   step {step:2d}: sigmoid mask loss {loss:.4f}")
    with nn.no_grad():
        logits = heads.mask_predictor(heads.mask_head(roi_features))
    # The last 1x1 conv holds one filter per class: only the gt class's filter moves.
    moved = np.abs(last_layer.data - filters_before).reshape(len(filters_before), -1).max(axis=1)
    names = ShapesDataset.CLASSES
    for c, name in enumerate(names):
        print(f"   class {c} ({name}): largest change of its 1x1 output filter {moved[c]:.4f}")
    probs = nn.sigmoid(logits[0])
    fig = plot_class_masks(
        probs,
        names,
        label,
        f"per-class masks after {FIT_STEPS} steps on one RoI: the gt class fits its target;\n"
        "the other classes' output filters never moved (their masks drift only with the "
        "shared layers)",
    )
    print(f"   -> {save(fig, FIGURES / '07_per_class_masks.png')}")
    return logits


# %% [markdown]
# ## 3. Sigmoid and softmax losses on the same logits: which channels get a gradient.
#
# ![07_sigmoid_vs_softmax](../figures/07_sigmoid_vs_softmax.png)


# %%
def step3_sigmoid_vs_softmax(logits, label, mask_target):
    labels = np.array([label])
    values, grads = [], []
    for kind in ("sigmoid", "softmax"):
        loss_fn, loss_backward = MASK_LOSSES[kind]
        values.append(loss_fn(logits, labels, mask_target[None]))
        grads.append(loss_backward(logits, labels, mask_target[None])[0])
    print("3. The same logits under both losses:")
    for kind, value, grad in zip(("sigmoid", "softmax"), values, grads, strict=True):
        touched = [c for c in range(grad.shape[0]) if np.abs(grad[c]).max() > 0]
        print(f"   {kind:7s}: loss {value:.4f}; channels with a gradient: {touched}")
    fig = plot_sigmoid_vs_softmax(grads[0], grads[1], ShapesDataset.CLASSES, values)
    print(f"   -> {save(fig, FIGURES / '07_sigmoid_vs_softmax.png')}")


# %% [markdown]
# ## 4. Pasting the predicted mask back into the image.
#
# ![07_paste](../figures/07_paste.png)


# %%
def step4_paste(image, target, k, proposal, logits, label):
    prob = nn.sigmoid(logits[0, label])
    pasted = paste_masks_in_image(prob[None, None], proposal[None], image.shape[1:])[0, 0]
    expanded = expand_boxes(proposal[None], 30 / 28)[0]
    gt = target["masks"][k].astype(bool)
    predicted = pasted > 0.5
    iou = (gt & predicted).sum() / max((gt | predicted).sum(), 1)
    print("4. Pasting: box grown by 30/28 for the one-pixel padding, mask resized to the box")
    print(f"   expanded box {expanded.round(1)}; mask IoU with the gt at threshold 0.5: {iou:.3f}")
    fig = plot_paste(image, prob, proposal, expanded, pasted)
    print(f"   -> {save(fig, FIGURES / '07_paste.png')}")


# %%
def main():
    image, target = ShapesDataset(8, image_size=128, seed=7)[5]
    k = 0
    label = int(target["labels"][k])
    model = MaskRCNN(MaskRCNNConfig.shapes(), rng=np.random.default_rng(0))
    proposal, mask_target = step1_target(image, target, k)
    logits = step2_fit_head(model, image, proposal, label, mask_target)
    step3_sigmoid_vs_softmax(logits, label, mask_target)
    step4_paste(image, target, k, proposal, logits, label)


# %% [markdown]
# Run every step (as `python tutorials/07_mask_head_and_loss.py` does).

# %%
if __name__ == "__main__":
    main()
