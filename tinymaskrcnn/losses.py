"""The losses of Mask R-CNN, each with its gradient next to it (Mask R-CNN §3, Eq. 1).

    L = L_cls + L_box + L_mask          (plus the RPN's objectness and box terms)

Every loss returns a Python float; its ``*_backward`` returns d(loss)/d(input) times
``grad_out`` (the upstream gradient of the scalar, 1.0 for the total loss), with the
shape and dtype of the input. Means over an empty set are 0 (torch would give NaN;
an image without objects must still train).

Shapes used below:
    K: rows (anchors, RoIs)     C: classes including background (index 0)
    M: side of a mask (28)      any: any shape, the same for input and target
"""

from __future__ import annotations

import numpy as np

from .nn import log_softmax, sigmoid, softmax

REDUCTIONS = ("sum", "mean")
# torchvision's detection heads (RPN and box head) use smooth L1 with beta = 1/9.
SMOOTH_L1_BETA = 1.0 / 9


def _check_pair(input, target, name_in="input", name_t="target"):
    input = np.asarray(input)
    target = np.asarray(target)
    if input.shape != target.shape:
        raise ValueError(
            f"{name_in} and {name_t} must have the same shape; got {input.shape} and {target.shape}"
        )
    return input, target


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'sum' or 'mean'; got {reduction!r}")


def _scale(reduction, n):
    # d(mean)/d(x_i) = 1/n; an empty mean is 0 with no gradient to spread.
    return 1.0 if reduction == "sum" else 1.0 / max(n, 1)


# --- smooth L1 (Fast R-CNN Eq. 3, with torchvision's beta) ---------------------------


def smooth_l1(input, target, beta: float = SMOOTH_L1_BETA, reduction: str = "sum") -> float:
    """Huber-style box regression loss: 0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta.

    input, target: (any) float box deltas; d = input - target.
    beta: the switch point; torchvision's detection heads use 1/9. beta = 0 is plain L1.
    reduction: "sum" (how both Mask R-CNN heads use it, then divide by the sample count)
        or "mean".
    """
    input, target = _check_pair(input, target)
    _check_reduction(reduction)
    if beta < 0:
        raise ValueError(f"beta must be >= 0; got {beta}")
    d = np.abs(input - target)
    if beta == 0:
        per = d
    else:
        per = np.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)
    return float(per.sum() * _scale(reduction, per.size))


def smooth_l1_backward(input, target, beta=SMOOTH_L1_BETA, reduction="sum", grad_out=1.0):
    """d smooth_l1 / d input: d / beta inside the quadratic zone, sign(d) outside."""
    input, target = _check_pair(input, target)
    _check_reduction(reduction)
    d = input - target
    if beta == 0:
        g = np.sign(d)
    else:
        g = np.where(np.abs(d) < beta, d / beta, np.sign(d))
    return (g * (grad_out * _scale(reduction, d.size))).astype(input.dtype, copy=False)


# --- softmax cross-entropy over classes (the box head's classifier) -----------------


def _check_logits_targets(logits, targets):
    logits = np.asarray(logits)
    targets = np.asarray(targets)
    if logits.ndim != 2 or targets.shape != (logits.shape[0],):
        raise ValueError(
            f"logits must be (K, C) and targets (K,) class indices; "
            f"got {logits.shape} and {targets.shape}"
        )
    if targets.size and (targets.min() < 0 or targets.max() >= logits.shape[1]):
        raise ValueError(
            f"targets must be class indices in [0, {logits.shape[1] - 1}]; "
            f"got values in [{targets.min()}, {targets.max()}]"
        )
    return logits, targets.astype(np.int64)


def cross_entropy(logits, targets) -> float:
    """Mean over K of -log softmax(logits)[target].

    logits: (K, C) float class scores (C includes background, class 0).
    targets: (K,) int class index of each row.
    """
    logits, targets = _check_logits_targets(logits, targets)
    if logits.shape[0] == 0:
        return 0.0
    logp = log_softmax(logits, axis=1)
    return float(-logp[np.arange(len(targets)), targets].mean())


def cross_entropy_backward(logits, targets, grad_out=1.0):
    """(softmax(logits) - one_hot(targets)) / K, shape (K, C)."""
    logits, targets = _check_logits_targets(logits, targets)
    grad = softmax(logits, axis=1)
    grad[np.arange(len(targets)), targets] -= 1
    return (grad * (grad_out / max(len(targets), 1))).astype(logits.dtype, copy=False)


# --- binary cross-entropy on logits (RPN objectness, sigmoid mask loss) ---------------


def bce_with_logits(logits, targets, reduction: str = "mean") -> float:
    """Mean (or sum) of -[t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))].

    logits: (any) float; targets: same shape, in [0, 1] (soft targets allowed: the
    mask targets are RoIAlign-ed binary masks).
    Written as max(x, 0) - x t + log(1 + exp(-|x|)), which is exact for large |x|.
    """
    logits, targets = _check_pair(logits, targets, "logits", "targets")
    _check_reduction(reduction)
    x = logits
    per = np.maximum(x, 0) - x * targets + np.log1p(np.exp(-np.abs(x)))
    return float(per.sum() * _scale(reduction, per.size))


def bce_with_logits_backward(logits, targets, reduction="mean", grad_out=1.0):
    """(sigmoid(x) - t) / n (mean) or sigmoid(x) - t (sum)."""
    logits, targets = _check_pair(logits, targets, "logits", "targets")
    _check_reduction(reduction)
    g = (sigmoid(logits) - targets) * (grad_out * _scale(reduction, logits.size))
    return g.astype(logits.dtype, copy=False)


# --- mask losses (Mask R-CNN §3, "Mask Representation"; Table 2b) --------------------


def _check_mask_args(mask_logits, labels, mask_targets):
    mask_logits = np.asarray(mask_logits)
    labels = np.asarray(labels)
    mask_targets = np.asarray(mask_targets)
    if mask_logits.ndim != 4:
        raise ValueError(f"mask_logits must be (K, C, M, M); got shape {mask_logits.shape}")
    k, c, mh, mw = mask_logits.shape
    if labels.shape != (k,):
        raise ValueError(f"labels must be ({k},) class indices; got shape {labels.shape}")
    if mask_targets.shape != (k, mh, mw):
        raise ValueError(f"mask_targets must be ({k}, {mh}, {mw}); got {mask_targets.shape}")
    if k and (labels.min() < 1 or labels.max() >= c):
        raise ValueError(
            f"labels must be foreground classes in [1, {c - 1}] (masks are learnt on "
            f"positive RoIs only); got values in [{labels.min()}, {labels.max()}]"
        )
    return mask_logits, labels.astype(np.int64), mask_targets


def mask_loss_sigmoid(mask_logits, labels, mask_targets) -> float:
    """Per-class binary cross-entropy on the gt class's channel only (the paper's loss).

    mask_logits: (K, C, M, M) float, one mask per class for each positive RoI.
    labels: (K,) int gt class of each RoI, in [1, C).
    mask_targets: (K, M, M) float in [0, 1], the gt mask resampled onto the RoI.
    The other C - 1 channels get no gradient, so classes do not compete for a pixel;
    the mean is over all K * M * M pixels, as torchvision's.
    """
    mask_logits, labels, mask_targets = _check_mask_args(mask_logits, labels, mask_targets)
    picked = mask_logits[np.arange(len(labels)), labels]
    return bce_with_logits(picked, mask_targets, reduction="mean")


def mask_loss_sigmoid_backward(mask_logits, labels, mask_targets, grad_out=1.0):
    """(K, C, M, M) gradient: BCE's gradient on channel labels[k], zero elsewhere."""
    mask_logits, labels, mask_targets = _check_mask_args(mask_logits, labels, mask_targets)
    rows = np.arange(len(labels))
    grad = np.zeros_like(mask_logits)
    grad[rows, labels] = bce_with_logits_backward(
        mask_logits[rows, labels], mask_targets, reduction="mean", grad_out=grad_out
    )
    return grad


def _softmax_mask_target(mask_logits, labels, mask_targets):
    # Per pixel a distribution over classes: t on the gt class, 1 - t on background.
    k = len(labels)
    target = np.zeros_like(mask_logits)
    target[np.arange(k), labels] = mask_targets
    target[:, 0] += 1 - mask_targets
    return target


def mask_loss_softmax(mask_logits, labels, mask_targets) -> float:
    """The multinomial ablation (Table 2b): per-pixel softmax over the C classes.

    Same arguments as ``mask_loss_sigmoid``. At each pixel the target distribution puts
    mass t on the gt class and 1 - t on background (class 0), t the soft mask target;
    the loss is the cross-entropy -sum_c target_c log softmax(logits)_c, averaged over
    K * M * M pixels. Unlike the sigmoid loss every channel gets a gradient, so the
    classes compete for each pixel.
    """
    mask_logits, labels, mask_targets = _check_mask_args(mask_logits, labels, mask_targets)
    if len(labels) == 0:
        return 0.0
    target = _softmax_mask_target(mask_logits, labels, mask_targets)
    per_pixel = -(target * log_softmax(mask_logits, axis=1)).sum(axis=1)
    return float(per_pixel.mean())


def mask_loss_softmax_backward(mask_logits, labels, mask_targets, grad_out=1.0):
    """(K, C, M, M) gradient (softmax - target) / (K M M); the targets sum to 1 per pixel."""
    mask_logits, labels, mask_targets = _check_mask_args(mask_logits, labels, mask_targets)
    k, _, mh, mw = mask_logits.shape
    target = _softmax_mask_target(mask_logits, labels, mask_targets)
    grad = softmax(mask_logits, axis=1) - target
    return (grad * (grad_out / max(k * mh * mw, 1))).astype(mask_logits.dtype, copy=False)


# The mask-loss names (MaskRCNNConfig.mask_loss) and their (loss, backward) pairs.
MASK_LOSSES = {
    "sigmoid": (mask_loss_sigmoid, mask_loss_sigmoid_backward),
    "softmax": (mask_loss_softmax, mask_loss_softmax_backward),
}
