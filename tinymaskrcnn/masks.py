"""The mask branch (Mask R-CNN §3, Fig. 4 right): head, targets, loss and pasting.

For every positive RoI the head predicts one M x M mask per class (M = 28) from the
RoI's 14 x 14 RoIAlign features. Training compares the gt class's channel with the
gt mask resampled onto the RoI; inference takes the predicted class's channel,
turns it into probabilities and pastes it back into the image at the box.

Shapes used below:
    K: RoIs (positive proposals in training, detections at inference)
    C: classes including background      F: feature channels (256)
    S: RoI feature size (14)             M: mask size (28 = 2 S)
    G: ground-truth objects of one image H, W: image height and width (the frame of
       the gt masks in training, of the output masks at inference)
"""

from __future__ import annotations

import numpy as np

from . import nn
from .losses import MASK_LOSSES
from .nn import init, resize_bilinear, sigmoid, softmax
from .roi_ops import roi_align

# --- head -----------------------------------------------------------------------------


def _conv_relu(in_channels, out_channels, dilation, rng):
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, rng=rng)
    # torchvision's MaskRCNNHeads: He-normal (fan_out, relu), zero bias.
    conv.weight.data = init.kaiming_normal(conv.weight.shape, rng, mode="fan_out")
    conv.bias.data = np.zeros_like(conv.bias.data)
    return nn.Sequential(conv, nn.ReLU())


class MaskRCNNHeads(nn.Sequential):
    """Four 3x3 conv + ReLU layers (FCN), F x S x S -> layers[-1] x S x S.

    Children are named "0".."3", each a (conv, relu) pair: parameters
    ``mask_head.0.0.weight``, torchvision's current names. Checkpoints of the older
    generation (``mask_head.mask_fcn1.weight``) are renamed on load.
    """

    def __init__(self, in_channels, layers=(256, 256, 256, 256), dilation=1, rng=None):
        rng = init.generator(rng)
        blocks, channels = [], in_channels
        for out_channels in layers:
            blocks.append(_conv_relu(channels, out_channels, dilation, rng))
            channels = out_channels
        super().__init__(*blocks)


class MaskRCNNPredictor(nn.Module):
    """2x2 stride-2 transposed conv + ReLU (S -> M = 2 S), then 1x1 conv to C mask logits."""

    def __init__(self, in_channels, dim_reduced, num_classes, rng=None):
        super().__init__()
        rng = init.generator(rng)
        self.conv5_mask = nn.ConvTranspose2d(in_channels, dim_reduced, 2, stride=2, rng=rng)
        self.relu = nn.ReLU()
        self.mask_fcn_logits = nn.Conv2d(dim_reduced, num_classes, 1, rng=rng)
        for layer in (self.conv5_mask, self.mask_fcn_logits):
            layer.weight.data = init.kaiming_normal(layer.weight.shape, rng, mode="fan_out")
            layer.bias.data = np.zeros_like(layer.bias.data)

    def forward(self, x):
        """x: (K, F, S, S) head features -> (K, C, 2S, 2S) mask logits."""
        return self.mask_fcn_logits(self.relu(self.conv5_mask(x)))

    def backward(self, grad_out):
        return self.conv5_mask.backward(self.relu.backward(self.mask_fcn_logits.backward(grad_out)))


# --- training targets and loss --------------------------------------------------------


def project_masks_on_boxes(gt_masks, boxes, matched_idxs, size: int) -> np.ndarray:
    """Each RoI's target: its matched gt mask cut out at the RoI and resampled to M x M.

    gt_masks: (G, H, W) uint8/bool/float full-image masks, the image's (resized) frame.
    boxes: (K, 4) float x1y1x2y2 RoIs (proposals), same frame.
    matched_idxs: (K,) int, index of each RoI's gt object.
    size: M. Returns (K, M, M) in boxes' float dtype, values in [0, 1].

    RoIAlign (output M, scale 1, adaptive sampling, aligned=False) over the binary mask
    gives *soft* targets at the edges; torchvision uses them as they are, so do we.
    """
    boxes = np.asarray(boxes)
    dtype = boxes.dtype if boxes.dtype in (np.float32, np.float64) else np.float32
    if len(boxes) == 0:
        return np.zeros((0, size, size), dtype)
    rois = np.concatenate([np.asarray(matched_idxs, dtype)[:, None], boxes.astype(dtype)], axis=1)
    masks = np.asarray(gt_masks).astype(dtype)[:, None]
    return roi_align(masks, rois, (size, size), 1.0, sampling_ratio=-1, aligned=False)[:, 0]


def mask_loss(mask_logits, labels, mask_targets, kind: str = "sigmoid"):
    """Mask loss and its gradient w.r.t. the logits, (float, (K, C, M, M)).

    mask_logits: (K, C, M, M) float; labels: (K,) int gt class of each positive RoI;
    mask_targets: (K, M, M) float in [0, 1]; kind: "sigmoid" (the paper) or "softmax".
    """
    if kind not in MASK_LOSSES:
        raise ValueError(f"mask_loss must be one of {', '.join(MASK_LOSSES)}; got {kind!r}")
    loss, backward = MASK_LOSSES[kind]
    return loss(mask_logits, labels, mask_targets), backward(mask_logits, labels, mask_targets)


# --- inference: from 28 x 28 logits to full-image masks -------------------------------


def mask_probabilities(mask_logits, labels, kind="sigmoid"):
    """Each detection's mask probabilities, read from its predicted class's channel.

    mask_logits: (K, C, M, M) float; labels: (K,) int predicted class of each detection;
    kind: the mask loss the head was trained with -- "sigmoid" reads the channel alone,
    "softmax" normalises over the classes first (Table 2b's multinomial masks).
    Returns (K, 1, M, M) in the logits' dtype, values in [0, 1].
    """
    rows = np.arange(len(labels))
    if kind == "softmax":
        return softmax(mask_logits, axis=1)[rows, labels][:, None]
    return sigmoid(mask_logits[rows, labels])[:, None]


def expand_boxes(boxes, scale: float) -> np.ndarray:
    """Scale (K, 4) x1y1x2y2 boxes about their centres by ``scale`` (same dtype)."""
    boxes = np.asarray(boxes)
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    cx = (boxes[:, 2] + boxes[:, 0]) * 0.5
    cy = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1).astype(
        boxes.dtype
    )


def paste_masks_in_image(masks, boxes, image_size, padding: int = 1) -> np.ndarray:
    """Paste each M x M mask at its box in an H x W image (torchvision's paste_masks_in_image).

    masks: (K, 1, M, M) float probabilities, one per detection.
    boxes: (K, 4) float x1y1x2y2, the image's pixels.
    image_size: (H, W). Returns (K, 1, H, W) float32, zero outside each box.

    The mask is padded by ``padding`` zero pixels and the box grown by (M + 2p) / M so
    that the mask's border falls off smoothly; the box is truncated to integers, the
    mask resized bilinearly to the box's (w + 1) x (h + 1) pixels and clipped to the
    image, as torchvision (the +1 is its legacy inclusive-pixel convention).
    """
    masks = np.asarray(masks)
    height, width = (int(s) for s in image_size)
    k = len(masks)
    out = np.zeros((k, 1, height, width), np.float32)
    if k == 0:
        return out
    if masks.ndim != 4 or masks.shape[1] != 1:
        raise ValueError(f"masks must be (K, 1, M, M); got shape {masks.shape}")
    m = masks.shape[-1]
    padded = np.pad(masks[:, 0].astype(np.float32), ((0, 0), (padding,) * 2, (padding,) * 2))
    scale = (m + 2 * padding) / m
    # int64 cast truncates toward zero, as torch's .to(torch.int64).
    boxes = expand_boxes(np.asarray(boxes, np.float32), scale).astype(np.int64)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        w, h = max(int(x2 - x1 + 1), 1), max(int(y2 - y1 + 1), 1)
        resized = resize_bilinear(padded[i][None], (h, w))[0]
        xa, xb = max(x1, 0), min(x2 + 1, width)
        ya, yb = max(y1, 0), min(y2 + 1, height)
        if xb > xa and yb > ya:
            out[i, 0, ya:yb, xa:xb] = resized[ya - y1 : yb - y1, xa - x1 : xb - x1]
    return out
