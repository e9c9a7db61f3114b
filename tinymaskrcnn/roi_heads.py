"""The RoI heads: box classification and regression, and the mask branch (Mask R-CNN §3).

Training: the gt boxes join the RPN's proposals (so every object has at least one
perfect RoI), proposals are matched to the gt at IoU 0.5 and 512 per image are sampled
with at most a quarter positive. Each sampled RoI's 7x7 features (RoIAlign on the level
that suits its size) go through two fc layers to class logits and class-specific box
deltas: cross-entropy and smooth L1. The positive RoIs also go through the mask head
(masks.py). Inference: softmax, decode per class, clip, threshold, per-class NMS, top
100; the mask head then runs on the detections.

Shapes used below:
    N: images     K: RoIs over the batch     K_i: RoIs of image i
    C: classes including background (index 0)
    F: pyramid channels (256)   S: RoI feature size (7 boxes, 14 masks)
    R: representation size (1024)   G: ground-truth objects of one image
    D: detections of one image
"""

from __future__ import annotations

import numpy as np

from . import kernels, nn
from .boxes import BoxCoder, batched_nms, box_iou, clip_boxes, remove_small_boxes
from .losses import (
    SMOOTH_L1_BETA,
    cross_entropy,
    cross_entropy_backward,
    smooth_l1,
    smooth_l1_backward,
)
from .masks import (
    MaskRCNNHeads,
    MaskRCNNPredictor,
    mask_loss,
    mask_probabilities,
    project_masks_on_boxes,
)
from .matching import BalancedPositiveNegativeSampler, Matcher
from .nn import init
from .roi_ops import MultiScaleRoI

MIN_DETECTION_SIZE = 1e-2  # torchvision drops detections thinner than this (pixels)


# --- box head -------------------------------------------------------------------------


class TwoMLPHead(nn.Module):
    """Flatten (K, F, S, S) and apply fc6 + ReLU, fc7 + ReLU: (K, R)."""

    def __init__(self, in_features, representation_size, rng=None):
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size, rng=rng)
        self.relu6 = nn.ReLU()
        self.fc7 = nn.Linear(representation_size, representation_size, rng=rng)
        self.relu7 = nn.ReLU()

    def forward(self, x):
        self._save(x.shape)
        flat = x.reshape(len(x), int(np.prod(x.shape[1:])))  # (a device array's too)
        return self.relu7(self.fc7(self.relu6(self.fc6(flat))))

    def backward(self, grad_out):
        shape = self._pop()
        g = self.fc6.backward(self.relu6.backward(self.fc7.backward(self.relu7.backward(grad_out))))
        return g.reshape(shape)


class FastRCNNPredictor(nn.Module):
    """(K, R) -> class logits (K, C) and class-specific deltas (K, 4C), weights (10,10,5,5)."""

    def __init__(self, in_channels, num_classes, rng=None):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes, rng=rng)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4, rng=rng)

    def forward(self, x):
        return self.cls_score(x), self.bbox_pred(x)

    def backward(self, grad_scores, grad_deltas):
        return self.cls_score.backward(grad_scores) + self.bbox_pred.backward(grad_deltas)


# --- training: which proposals to learn from ------------------------------------------


def sample_proposals(proposals, gt_boxes, gt_labels, cfg, rng):
    """Add the gt boxes to one image's proposals, match at 0.5 and sample.

    proposals: (P, 4) float, resized-image pixels; gt_boxes: (G, 4); gt_labels: (G,).
    Returns (rois (K_i, 4), labels (K_i,) int64 with 0 for background, matched (K_i,)
    int64 gt index (0 where background)), in increasing index order of the candidates.
    """
    matcher = Matcher(cfg.box_fg_iou_thresh, cfg.box_bg_iou_thresh, allow_low_quality_matches=False)
    sampler = BalancedPositiveNegativeSampler(
        cfg.box_batch_size_per_image, cfg.box_positive_fraction
    )
    candidates = np.concatenate([proposals, gt_boxes.astype(proposals.dtype)])
    if len(gt_boxes) == 0:
        matched = np.zeros(len(candidates), np.int64)
        labels = np.zeros(len(candidates), np.int64)
    else:
        matches = matcher(box_iou(gt_boxes.astype(proposals.dtype), candidates))
        matched = np.maximum(matches, 0)
        labels = gt_labels[matched].astype(np.int64)
        labels[matches == Matcher.BELOW_LOW_THRESHOLD] = 0
        labels[matches == Matcher.BETWEEN_THRESHOLDS] = -1
    pos, neg = sampler(labels, rng)
    keep = np.flatnonzero(pos | neg)
    return candidates[keep], labels[keep], matched[keep]


def fastrcnn_loss(class_logits, box_regression, labels, regression_targets):
    """Classifier and box-regression losses with their gradients.

    class_logits: (K, C); box_regression: (K, 4C); labels: (K,) int64 (0 background);
    regression_targets: (K, 4) encoded gt deltas of each RoI (used where labels > 0).
    Returns (loss_classifier, loss_box_reg, grad_logits (K, C), grad_regression (K, 4C)).
    Smooth L1 (beta 1/9) on the true class's deltas of the positives, summed and divided
    by K, the number of sampled RoIs (Fast R-CNN's normalisation, as torchvision).
    """
    k = len(labels)
    loss_cls = cross_entropy(class_logits, labels)
    grad_cls = cross_entropy_backward(class_logits, labels)
    pos = np.flatnonzero(labels > 0)
    per_class = box_regression.reshape(k, -1, 4)
    picked = per_class[pos, labels[pos]]
    scale = 1.0 / max(k, 1)
    loss_box = smooth_l1(picked, regression_targets[pos], SMOOTH_L1_BETA) * scale
    grad_box = np.zeros_like(per_class)
    grad_box[pos, labels[pos]] = (
        smooth_l1_backward(picked, regression_targets[pos], SMOOTH_L1_BETA) * scale
    )
    return loss_cls, loss_box, grad_cls, grad_box.reshape(box_regression.shape)


# --- inference ------------------------------------------------------------------------


def postprocess_detections(class_logits, box_regression, proposals, image_sizes, cfg, trace=None):
    """Scores, per-class boxes, thresholds and per-class NMS: the detections of each image.

    class_logits: (K, C); box_regression: (K, 4C); proposals: list of N (K_i, 4);
    image_sizes: N (h, w) resized sizes. Returns a list of N dicts with boxes (D, 4)
    float (resized-image pixels), scores (D,) in (box_score_thresh, 1], labels (D,)
    int64 in [1, C); sorted by decreasing score; D <= box_detections_per_img.
    trace: as MaskRCNN.forward's; receives "detections_before_nms", the candidates of
    each image that NMS then thins (lists of N boxes, scores, labels).
    """
    num_classes = class_logits.shape[1]
    coder = BoxCoder(cfg.bbox_reg_weights)
    probs = nn.softmax(class_logits, axis=1)
    counts = [len(p) for p in proposals]
    candidates, start = [], 0
    for props, count, size in zip(proposals, counts, image_sizes, strict=True):
        stop = start + count
        boxes = coder.decode(box_regression[start:stop], props).reshape(count, num_classes, 4)
        scores = probs[start:stop]
        start = stop
        boxes = clip_boxes(boxes.reshape(-1, 4), size).reshape(count, num_classes, 4)
        labels = np.broadcast_to(np.arange(num_classes), scores.shape)
        # drop the background column, then treat every (RoI, class) pair as a candidate
        boxes = boxes[:, 1:].reshape(-1, 4)
        scores = scores[:, 1:].reshape(-1)
        labels = labels[:, 1:].reshape(-1)
        keep = np.flatnonzero(scores > cfg.box_score_thresh)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, MIN_DETECTION_SIZE)
        candidates.append((boxes[keep], scores[keep], labels[keep].astype(np.int64)))
    if trace is not None:
        trace(
            "detections_before_nms",
            boxes=[c[0] for c in candidates],
            scores=[c[1] for c in candidates],
            labels=[c[2] for c in candidates],
        )
    results = []
    for boxes, scores, labels in candidates:
        keep = batched_nms(boxes, scores, labels, cfg.box_nms_thresh)[: cfg.box_detections_per_img]
        results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return results


# --- the whole RoI stage --------------------------------------------------------------


class RoIHeads(nn.Module):
    """Box branch and mask branch on the proposals of the RPN.

    ``heads(features, proposals, image_sizes, targets=None, rng=None, trace=None)``
    returns ``(detections, losses)``: detections a list of N dicts (boxes, labels,
    scores, and masks (D, 1, M, M) probabilities) at inference, losses the dict of
    loss_classifier, loss_box_reg and loss_mask in training. Its losses are computed
    inside forward, so ``backward()`` takes no upstream gradient: it returns the
    gradients of their sum w.r.t. the L = 4 feature maps P2..P5.
    """

    def __init__(self, cfg, in_channels, rng=None):
        super().__init__()
        rng = init.generator(rng)
        self.cfg = cfg
        self.box_roi_pool = MultiScaleRoI(
            cfg.box_roi_output_size, cfg.roi_op, cfg.roi_sampling_ratio
        )
        self.mask_roi_pool = MultiScaleRoI(
            cfg.mask_roi_output_size, cfg.roi_op, cfg.roi_sampling_ratio
        )
        size = cfg.box_roi_output_size
        self.box_head = TwoMLPHead(in_channels * size * size, cfg.box_representation_size, rng)
        self.box_predictor = FastRCNNPredictor(cfg.box_representation_size, cfg.num_classes, rng)
        self.mask_head = MaskRCNNHeads(in_channels, cfg.mask_layers, cfg.mask_dilation, rng)
        self.mask_predictor = MaskRCNNPredictor(
            cfg.mask_layers[-1], cfg.mask_layers[-1], cfg.num_classes, rng
        )

    def forward(self, features, proposals, image_sizes, targets=None, rng=None, trace=None):
        """features: [P2..P5] (N, F, Hl, Wl); proposals: N (P_i, 4); image_sizes: N (h, w);
        targets: N dicts with boxes (G, 4), labels (G,), masks (G, h, w), resized frame;
        rng: the np.random.Generator of the RoI sampler (training);
        trace: as MaskRCNN.forward's."""
        cfg = self.cfg
        trace = trace or (lambda stage, **arrays: None)
        training = self.training and targets is not None
        labels = matched = None
        if training:
            if rng is None:
                raise ValueError(
                    "RoIHeads needs rng, a np.random.Generator, to sample RoIs in training"
                )
            sampled = [
                sample_proposals(p, t["boxes"], t["labels"], cfg, rng)
                for p, t in zip(proposals, targets, strict=True)
            ]
            proposals = [s[0] for s in sampled]
            labels = np.concatenate([s[1] for s in sampled])
            matched = [s[2] for s in sampled]
        box_features = self.box_roi_pool(features, proposals, image_sizes)
        trace("roi_features", rois=proposals, features=box_features, labels=labels, matched=matched)
        class_logits, box_regression = self.box_predictor(self.box_head(box_features))
        # In inference on a GPU the heads ran there; their outputs come over for the sort.
        class_logits, box_regression = map(kernels.to_host, (class_logits, box_regression))
        trace("box_head", class_logits=class_logits, box_regression=box_regression)
        if not training:
            return self._detect(
                features, class_logits, box_regression, proposals, image_sizes, trace
            )
        sampled = (proposals, labels, matched)
        losses, grads = self._losses(
            features, image_sizes, targets, sampled, (class_logits, box_regression), trace
        )
        self._save(*grads)
        return None, losses

    def _detect(self, features, class_logits, box_regression, proposals, image_sizes, trace):
        """Inference: the detections, then the mask head on their boxes."""
        detections = postprocess_detections(
            class_logits, box_regression, proposals, image_sizes, self.cfg, trace
        )
        trace("detections", detections=detections)
        boxes = [d["boxes"] for d in detections]
        labels = np.concatenate([d["labels"] for d in detections])
        mask_logits = self._mask_logits(features, boxes, image_sizes)
        trace("mask_logits", mask_logits=mask_logits, boxes=boxes, labels=labels)
        probs = mask_probabilities(mask_logits, labels, self.cfg.mask_loss)
        start = 0
        for d in detections:
            d["masks"] = probs[start : start + len(d["boxes"])]
            start += len(d["boxes"])
        return detections, {}

    def _losses(self, features, image_sizes, targets, sampled, outputs, trace):
        """Training: the three losses and their gradients w.r.t. the heads' outputs.

        sampled: (RoIs per image, labels (K,), matched gt per image) of sample_proposals;
        outputs: the box predictor's (class_logits (K, C), box_regression (K, 4C)).
        """
        cfg = self.cfg
        proposals, labels, matched = sampled
        class_logits, box_regression = outputs
        # Box branch: encode each positive RoI's gt box against it.
        coder = BoxCoder(cfg.bbox_reg_weights)
        reg_targets = np.zeros((len(labels), 4), box_regression.dtype)
        start = 0
        for rois, m, t in zip(proposals, matched, targets, strict=True):
            stop = start + len(rois)
            pos = np.flatnonzero(labels[start:stop] > 0)
            if pos.size:
                gt = np.asarray(t["boxes"], rois.dtype)[m[pos]]
                reg_targets[start + pos] = coder.encode(gt, rois[pos])
            start = stop
        loss_cls, loss_box, g_cls, g_box = fastrcnn_loss(
            class_logits, box_regression, labels, reg_targets
        )

        # Mask branch on the positives only: targets cut from the gt masks at each RoI.
        mask_rois, mask_labels, mask_targets, start = [], [], [], 0
        for rois, m, t in zip(proposals, matched, targets, strict=True):
            stop = start + len(rois)
            pos = np.flatnonzero(labels[start:stop] > 0)
            mask_rois.append(rois[pos])
            mask_labels.append(labels[start:stop][pos])
            mask_targets.append(
                project_masks_on_boxes(t["masks"], rois[pos], m[pos], cfg.mask_output_size)
                if pos.size
                else np.zeros((0, cfg.mask_output_size, cfg.mask_output_size), rois.dtype)
            )
            start = stop
        mask_logits = self._mask_logits(features, mask_rois, image_sizes)
        mask_labels, mask_targets = np.concatenate(mask_labels), np.concatenate(mask_targets)
        trace(
            "mask_logits",
            mask_logits=mask_logits,
            boxes=mask_rois,
            labels=mask_labels,
            targets=mask_targets,
        )
        loss_mask, g_mask = mask_loss(mask_logits, mask_labels, mask_targets, cfg.mask_loss)
        losses = {"loss_classifier": loss_cls, "loss_box_reg": loss_box, "loss_mask": loss_mask}
        return losses, (g_cls, g_box, g_mask)

    def _mask_logits(self, features, boxes, image_sizes):
        if sum(len(b) for b in boxes) == 0:  # no positives / no detections: nothing to run
            m = self.cfg.mask_output_size
            return np.zeros((0, self.cfg.num_classes, m, m), features[0].dtype)
        x = self.mask_roi_pool(features, boxes, image_sizes)
        return kernels.to_host(self.mask_predictor(self.mask_head(x)))

    def backward(self, loss_weights=None):
        """Gradient of (loss_classifier + loss_box_reg + loss_mask) w.r.t. [P2..P5], or of
        their weighted sum with ``loss_weights`` (loss name -> factor, absent 1.0)."""
        g_cls, g_box, g_mask = self._pop()
        weights = loss_weights or {}
        g_cls = g_cls * weights.get("loss_classifier", 1.0)
        g_box = g_box * weights.get("loss_box_reg", 1.0)
        g_mask = g_mask * weights.get("loss_mask", 1.0)
        g = self.box_head.backward(self.box_predictor.backward(g_cls, g_box))
        grads = self.box_roi_pool.backward(g)
        if len(g_mask):
            g = self.mask_head.backward(self.mask_predictor.backward(g_mask))
            grads = [a + b for a, b in zip(grads, self.mask_roi_pool.backward(g), strict=True)]
        return grads
