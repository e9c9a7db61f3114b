"""Region Proposal Network (Faster R-CNN §3.1; FPN §4.1; Mask R-CNN §3).

A small convolutional head slides over every pyramid level and, at each location,
scores A anchors for "object or not" and predicts deltas that refine them. Training
matches anchors to the ground truth (0.7 / 0.3), samples 256 of them half positive, and
scores them with binary cross-entropy and smooth L1. Inference (and training, to feed
the box head) decodes the best anchors of each level into proposals, clips them,
removes tiny and low-scoring ones, runs NMS per level, and keeps the top N per image.

Shapes used below:
    N: images in the batch        A: anchors per feature-map location (3)
    L: pyramid levels (P2..P6)    Hl, Wl: height and width of level l
    M: anchors over all levels    (sum over l of Hl * Wl * A), in the order of
                                  docs/architecture.md, Anchors
    G: ground-truth boxes of one image        P: proposals of one image
    D: channels of the pyramid (256)
"""

from __future__ import annotations

import numpy as np

from . import kernels, nn
from .anchors import AnchorGenerator
from .boxes import BoxCoder, batched_nms, box_iou, clip_boxes, remove_small_boxes
from .losses import (
    SMOOTH_L1_BETA,
    bce_with_logits,
    bce_with_logits_backward,
    smooth_l1,
    smooth_l1_backward,
)
from .matching import BalancedPositiveNegativeSampler, Matcher
from .nn import init

# torchvision's constants: boxes thinner than this are dropped before NMS; the smooth L1
# switch point of both detection heads.
MIN_PROPOSAL_SIZE = 1e-3


class RPNHead(nn.Module):
    """3x3 conv (D -> D) + ReLU, then 1x1 convs to A objectness logits and 4A deltas.

    One head shared by every level: calling it on L maps keeps L entries on each
    layer's stack, and ``backward`` unwinds them in reverse order.
    Parameter names are torchvision's: ``conv.0.0.weight``, ``cls_logits.weight``,
    ``bbox_pred.weight``.
    """

    def __init__(self, in_channels, num_anchors, rng=None):
        super().__init__()
        rng = init.generator(rng)
        conv = nn.Conv2d(in_channels, in_channels, 3, padding=1, rng=rng)
        self.conv = nn.Sequential(nn.Sequential(conv, nn.ReLU()))
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1, rng=rng)
        self.bbox_pred = nn.Conv2d(in_channels, 4 * num_anchors, 1, rng=rng)
        # torchvision's RPNHead: weights N(0, 0.01), biases 0.
        for layer in (conv, self.cls_logits, self.bbox_pred):
            layer.weight.data = init.normal(layer.weight.shape, rng, std=0.01)
            layer.bias.data = np.zeros_like(layer.bias.data)

    def forward(self, features):
        """features: list of L (N, D, Hl, Wl) -> (objectness, deltas), lists of L maps.

        objectness[l]: (N, A, Hl, Wl) logits; deltas[l]: (N, 4A, Hl, Wl).
        """
        objectness, deltas = [], []
        for x in features:
            t = self.conv(x)
            objectness.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return objectness, deltas

    def backward(self, grad_objectness, grad_deltas):
        """Gradients of the L objectness and delta maps -> list of L feature gradients."""
        grads = []
        for g_obj, g_del in zip(reversed(grad_objectness), reversed(grad_deltas), strict=True):
            g = self.bbox_pred.backward(g_del) + self.cls_logits.backward(g_obj)
            grads.append(self.conv.backward(g))
        return grads[::-1]


# --- flattening the head's maps into anchor order -------------------------------------


def flatten_predictions(objectness, deltas):
    """Per-level maps -> (N, M) logits and (N, M, 4) deltas in anchor order
    (docs/architecture.md, Anchors).

    Within a level: location-major (row, then column), then the A anchors of the cell.
    """
    flat_obj, flat_del = [], []
    for obj, dl in zip(objectness, deltas, strict=True):
        n, a, h, w = obj.shape
        flat_obj.append(obj.transpose(0, 2, 3, 1).reshape(n, h * w * a))
        flat_del.append(dl.reshape(n, a, 4, h, w).transpose(0, 3, 4, 1, 2).reshape(n, -1, 4))
    return np.concatenate(flat_obj, axis=1), np.concatenate(flat_del, axis=1)


def unflatten_gradients(grad_obj, grad_del, shapes):
    """Inverse of ``flatten_predictions`` for gradients: (N, M), (N, M, 4) -> per-level maps.

    shapes: list of L (N, A, Hl, Wl), the objectness maps' shapes.
    """
    g_obj, g_del, start = [], [], 0
    for n, a, h, w in shapes:
        stop = start + h * w * a
        g_obj.append(grad_obj[:, start:stop].reshape(n, h, w, a).transpose(0, 3, 1, 2))
        g_del.append(
            grad_del[:, start:stop]
            .reshape(n, h, w, a, 4)
            .transpose(0, 3, 4, 1, 2)
            .reshape(n, 4 * a, h, w)
        )
        start = stop
    return [np.ascontiguousarray(g) for g in g_obj], [np.ascontiguousarray(g) for g in g_del]


# --- proposals ------------------------------------------------------------------------


def top_n_per_level(objectness, num_per_level, top_n):
    """Indices (into M) of the ``top_n`` highest logits of each level, level by level.

    objectness: (M,) logits of one image; num_per_level: Hl * Wl * A for each level.
    Taking the top-k before decoding keeps the work independent of the image size.
    """
    picked, start = [], 0
    for count in num_per_level:
        level = objectness[start : start + count]
        k = min(top_n, count)
        order = np.argsort(-level, kind="stable")[:k]
        picked.append(order + start)
        start += count
    return np.concatenate(picked)


def proposal_candidates(objectness, deltas, anchors, num_per_level, image_size, cfg, training):
    """One image's proposals before NMS: top-n per level, decoded, clipped, filtered.

    objectness: (M,) float logits; deltas: (M, 4) float, weights (1, 1, 1, 1);
    anchors: (M, 4) float x1y1x2y2, padded-image pixels; num_per_level: L counts;
    image_size: (h, w) of the resized image (before padding): boxes are clipped to it.
    Returns boxes (Q, 4), scores (Q,) = sigmoid(objectness) and level (Q,) int, the
    pyramid level index of each box (0 = P2), Q <= L * rpn_pre_nms_top_n.
    """
    pre_n = cfg.rpn_pre_nms_top_n_train if training else cfg.rpn_pre_nms_top_n_test
    idx = top_n_per_level(objectness, num_per_level, pre_n)
    level = np.repeat(np.arange(len(num_per_level)), num_per_level)[idx]
    boxes = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode(deltas[idx], anchors[idx])
    scores = nn.sigmoid(objectness[idx])
    boxes = clip_boxes(boxes, image_size)
    keep = remove_small_boxes(boxes, MIN_PROPOSAL_SIZE)
    boxes, scores, level = boxes[keep], scores[keep], level[keep]
    keep = np.flatnonzero(scores >= cfg.rpn_score_thresh)
    return boxes[keep], scores[keep], level[keep]


def nms_survivors(boxes, scores, level, cfg, training):
    """Which of one image's candidates become proposals.

    boxes (Q, 4), scores (Q,), level (Q,): ``proposal_candidates``' output.
    Returns (survivors, post_n): survivors (Q',) int64 indices of the candidates that NMS
    within each level keeps, by decreasing score; the proposals are the first post_n.
    """
    post_n = cfg.rpn_post_nms_top_n_train if training else cfg.rpn_post_nms_top_n_test
    # NMS within each level only: boxes of different scales do not suppress each other.
    return batched_nms(boxes, scores, level, cfg.rpn_nms_thresh), post_n


def select_proposals(objectness, deltas, anchors, num_per_level, image_size, cfg, training):
    """Turn one image's RPN outputs into proposals.

    Arguments as ``proposal_candidates``. Returns boxes (P, 4) and scores (P,) =
    sigmoid(objectness) in [0, 1], by decreasing score, P <= rpn_post_nms_top_n.
    """
    boxes, scores, level = proposal_candidates(
        objectness, deltas, anchors, num_per_level, image_size, cfg, training
    )
    survivors, post_n = nms_survivors(boxes, scores, level, cfg, training)
    return boxes[survivors[:post_n]], scores[survivors[:post_n]]


# --- training targets and losses ------------------------------------------------------


def anchor_targets(anchors, gt_boxes, matcher):
    """Label each anchor of one image and find its gt box.

    anchors: (M, 4); gt_boxes: (G, 4), same frame (resized image pixels).
    Returns labels (M,) int64 (1 object, 0 background, -1 ignored: IoU between the
    thresholds) and matched (M,) int64, the gt index of each anchor (0 where none).
    With G = 0 every anchor is background.
    """
    if len(gt_boxes) == 0:
        return np.zeros(len(anchors), np.int64), np.zeros(len(anchors), np.int64)
    matches = matcher(box_iou(gt_boxes, anchors))
    labels = (matches >= 0).astype(np.int64)
    labels[matches == Matcher.BETWEEN_THRESHOLDS] = -1
    return labels, np.maximum(matches, 0)


def rpn_losses(objectness, deltas, anchors, targets, cfg, rng):
    """The two RPN losses and their gradients w.r.t. the flattened predictions.

    objectness: (N, M) logits; deltas: (N, M, 4); anchors: (M, 4), the same for every
    image; targets: list of N dicts with "boxes" (G, 4) in resized-image pixels;
    rng: np.random.Generator for the sampler.
    Returns ({"loss_objectness", "loss_rpn_box_reg"}, grad_objectness (N, M),
    grad_deltas (N, M, 4), info) where info holds each image's labels and sampled
    anchors (for tutorials and tests).
    """
    matcher = Matcher(cfg.rpn_fg_iou_thresh, cfg.rpn_bg_iou_thresh, allow_low_quality_matches=True)
    sampler = BalancedPositiveNegativeSampler(
        cfg.rpn_batch_size_per_image, cfg.rpn_positive_fraction
    )
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    pos = np.zeros(objectness.shape, bool)
    neg = np.zeros(objectness.shape, bool)
    reg_targets = np.zeros(deltas.shape, deltas.dtype)
    labels_all = []
    for i, target in enumerate(targets):
        gt = np.asarray(target["boxes"], anchors.dtype).reshape(-1, 4)
        labels, matched = anchor_targets(anchors, gt, matcher)
        pos[i], neg[i] = sampler(labels, rng)
        if pos[i].any():
            reg_targets[i, pos[i]] = coder.encode(gt[matched[pos[i]]], anchors[pos[i]])
        labels_all.append(labels)
    sampled = pos | neg
    num_sampled = int(sampled.sum())
    # torchvision: mean BCE over the sampled anchors; smooth L1 summed over positives and
    # divided by the number of *sampled* anchors (not positives), Faster R-CNN's lambda.
    obj_target = pos.astype(objectness.dtype)
    loss_obj = bce_with_logits(objectness[sampled], obj_target[sampled])
    grad_obj = np.zeros_like(objectness)
    grad_obj[sampled] = bce_with_logits_backward(objectness[sampled], obj_target[sampled])
    scale = 1.0 / max(num_sampled, 1)
    loss_box = smooth_l1(deltas[pos], reg_targets[pos], SMOOTH_L1_BETA) * scale
    grad_del = np.zeros_like(deltas)
    grad_del[pos] = smooth_l1_backward(deltas[pos], reg_targets[pos], SMOOTH_L1_BETA) * scale
    losses = {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_box}
    info = {"labels": labels_all, "positive": list(pos), "negative": list(neg)}
    return losses, grad_obj, grad_del, info


# --- the whole network ----------------------------------------------------------------


class RegionProposalNetwork(nn.Module):
    """Head + anchors + proposal selection + (in training) losses and their backward.

    ``rpn(features, image_sizes, padded_size, targets=None, rng=None, trace=None)``
    returns ``(proposals, losses)``: proposals a list of N (P, 4) arrays (resized-image
    pixels, by decreasing objectness), losses a dict (empty unless training with
    targets). Its losses are computed inside forward, so ``backward()`` takes no
    upstream gradient: it returns the gradient of their sum w.r.t. each of the L maps.
    """

    def __init__(self, cfg, in_channels, rng=None):
        super().__init__()
        self.cfg = cfg
        self.anchor_generator = AnchorGenerator(cfg.anchor_sizes, cfg.aspect_ratios)
        self.head = RPNHead(in_channels, cfg.num_anchors_per_location, rng=rng)
        self._anchor_cache = None  # (key, anchors, num_per_level, strides): _anchors

    def _anchors(self, padded_size, features):
        """(anchors (M, 4) in the maps' dtype, read-only; A * Hl * Wl per level; strides).

        The anchors depend only on the generator, the padded size and the map sizes,
        which stay the same from batch to batch (the shapes model always sees 128 x 128),
        so the last ones are kept and handed out again while all of them match;
        read-only, so that no caller can change what the next forward gets.
        """
        feature_sizes = [tuple(int(s) for s in f.shape[2:]) for f in features]
        key = (
            self.anchor_generator,  # compared by identity: a new generator, new anchors
            tuple(int(s) for s in padded_size),
            tuple(feature_sizes),
            np.dtype(features[0].dtype),
        )
        kept = self._anchor_cache
        # A writeable copy is one unpickled (a Ray worker's model): made again, read-only.
        if kept is None or kept[0] != key or kept[1].flags.writeable:
            per_level = self.anchor_generator.generate(padded_size, feature_sizes)
            anchors = np.concatenate(per_level).astype(features[0].dtype)
            anchors.flags.writeable = False
            strides = self.anchor_generator.strides(padded_size, feature_sizes)
            self._anchor_cache = (key, anchors, [len(a) for a in per_level], strides)
        _, anchors, num_per_level, strides = self._anchor_cache
        return anchors, list(num_per_level), list(strides)

    def forward(self, features, image_sizes, padded_size, targets=None, rng=None, trace=None):
        """features: list of L (N, D, Hl, Wl); image_sizes: N (h, w) before padding;
        padded_size: (Hp, Wp) of the batch (anchors tile it); targets: list of N dicts
        with "boxes" (G, 4) in resized-image pixels, or None; rng: the
        np.random.Generator of the anchor sampler (training); trace: as
        MaskRCNN.forward's."""
        cfg = self.cfg
        trace = trace or (lambda stage, **arrays: None)
        anchors, num_per_level, strides = self._anchors(padded_size, features)
        trace("anchors", anchors=anchors, num_per_level=num_per_level, strides=strides)
        objectness_maps, delta_maps = self.head(features)
        # On the GPU (the "cuda" backend's inference) the maps come over: what follows
        # sorts the scores, which stays on the host (docs/architecture.md, Backends and dispatch).
        objectness_maps = [kernels.to_host(m) for m in objectness_maps]
        delta_maps = [kernels.to_host(m) for m in delta_maps]
        objectness, deltas = flatten_predictions(objectness_maps, delta_maps)
        trace("rpn_head", objectness=objectness, deltas=deltas)
        candidates = [
            proposal_candidates(o, d, anchors, num_per_level, size, cfg, self.training)
            for o, d, size in zip(objectness, deltas, image_sizes, strict=True)
        ]
        boxes, scores, levels = (list(c) for c in zip(*candidates, strict=True))
        trace("proposal_candidates", boxes=boxes, scores=scores, levels=levels)
        kept = [
            nms_survivors(b, s, lv, cfg, self.training)
            for b, s, lv in zip(boxes, scores, levels, strict=True)
        ]
        keep = [survivors for survivors, _ in kept]
        proposals = [b[k[:n]] for b, (k, n) in zip(boxes, kept, strict=True)]
        scores = [s[k[:n]] for s, (k, n) in zip(scores, kept, strict=True)]
        trace("proposals", boxes=proposals, scores=scores, nms_keep=keep)
        if not (self.training and targets is not None):
            return proposals, {}
        if rng is None:
            raise ValueError(
                "the RPN needs rng, a np.random.Generator, to sample anchors in training"
            )
        losses, grad_obj, grad_del, info = rpn_losses(
            objectness, deltas, anchors, targets, cfg, rng
        )
        trace("matching", anchors=anchors, **info)
        self._save(grad_obj, grad_del, [o.shape for o in objectness_maps])
        return proposals, losses

    def backward(self, loss_weights=None):
        """Gradient of (loss_objectness + loss_rpn_box_reg) w.r.t. each feature map, or
        of their weighted sum with ``loss_weights`` (loss name -> factor, absent 1.0)."""
        grad_obj, grad_del, shapes = self._pop()
        weights = loss_weights or {}
        grad_obj = grad_obj * weights.get("loss_objectness", 1.0)
        grad_del = grad_del * weights.get("loss_rpn_box_reg", 1.0)
        g_obj, g_del = unflatten_gradients(grad_obj, grad_del, shapes)
        return self.head.backward(g_obj, g_del)
