"""Masks: targets, per-class outputs, the two mask losses, pasting (tutorial 07).

Shapes used below:
    H, W: the image    M: mask resolution (28)    C: classes, background included
"""

import matplotlib.pyplot as plt
import numpy as np

from . import draw_boxes, draw_contour, show_image


def _mask_axes(ax, title):
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("mask column")
    ax.set_ylabel("mask row")


def _no_ticks(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def plot_mask_target(image, gt_mask, proposal, target):
    """A gt mask, a proposal over it, and the proposal's M x M soft target.

    image: (3, H, W) float in [0, 1]. gt_mask: (H, W) uint8 {0, 1}. proposal: (4,) float
    x1 y1 x2 y2, image pixels. target: (M, M) float in [0, 1], project_masks_on_boxes of
    the mask over the proposal.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    show_image(axes[0], image, "gt mask (white outline), proposal (black)")
    draw_contour(axes[0], gt_mask)
    draw_boxes(axes[0], proposal, color="black", linewidth=2.5)
    im = axes[1].imshow(target, vmin=0, vmax=1, cmap="viridis")
    m = target.shape[0]
    _mask_axes(axes[1], f"{m}x{m} target: RoIAlign of the mask\nover the proposal")
    fig.colorbar(im, ax=axes[1], label="target (soft at the edges)")
    return fig


def plot_class_masks(probs, class_names, gt_label, title):
    """One RoI's M x M mask probability for every class; the gt class framed.

    probs: (C, M, M) float in [0, 1]; class_names: C names; gt_label: int class index.
    """
    c = len(probs)
    fig, axes = plt.subplots(1, c, figsize=(3.0 * c, 3.4))
    for k, ax in enumerate(axes):
        im = ax.imshow(probs[k], vmin=0, vmax=1, cmap="viridis")
        gt = k == gt_label
        ax.set_title(f"class {k}: {class_names[k]}" + (" (gt)" if gt else ""), fontsize=9)
        _no_ticks(ax)
        if gt:
            for side in ax.spines.values():
                side.set_edgecolor("tab:red")
                side.set_linewidth(3)
    fig.colorbar(im, ax=axes, shrink=0.8, label="sigmoid(logit)")
    fig.suptitle(title)
    return fig


def plot_sigmoid_vs_softmax(grad_sigmoid, grad_softmax, class_names, losses):
    """Gradient of each mask loss w.r.t. every class channel of the same logits.

    grad_sigmoid, grad_softmax: (C, M, M) float, d loss / d logits of one RoI.
    class_names: C names. losses: (sigmoid loss, softmax loss), floats.
    The per-class sigmoid loss touches only the gt channel; the softmax touches all.
    """
    c = grad_sigmoid.shape[0]
    fig, axes = plt.subplots(2, c, figsize=(3.0 * c, 6.4))
    limit = max(np.abs(grad_sigmoid).max(), np.abs(grad_softmax).max(), 1e-12)
    rows = (
        (grad_sigmoid, "sigmoid (per class)", losses[0]),
        (grad_softmax, "softmax (multinomial)", losses[1]),
    )
    for row, (grad, name, value) in enumerate(rows):
        for k in range(c):
            ax = axes[row, k]
            im = ax.imshow(grad[k], vmin=-limit, vmax=limit, cmap="coolwarm")
            _no_ticks(ax)
            ax.set_title(f"{class_names[k]}: |g| max {np.abs(grad[k]).max():.1e}", fontsize=8)
        axes[row, 0].set_ylabel(f"{name}\nloss {value:.3f}", fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.8, label="d loss / d logit")
    fig.suptitle("gradient reaching each class channel")
    return fig


def plot_paste(image, prob, box, expanded, pasted):
    """Pasting one M x M probability back into the image.

    image: (3, H, W) float in [0, 1]. prob: (M, M) float in [0, 1]. box, expanded: (4,)
    float x1 y1 x2 y2, image pixels: the detection, and its box grown by (M + 2) / M for
    the mask's one-cell padding. pasted: (H, W) float, the full-image probability.
    """
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6), gridspec_kw={"wspace": 0.35})
    im = axes[0].imshow(prob, vmin=0, vmax=1, cmap="viridis")
    _mask_axes(axes[0], f"predicted {prob.shape[0]}x{prob.shape[1]} mask")
    fig.colorbar(im, ax=axes[0], shrink=0.8)
    show_image(axes[1], image, "box (black) and the box grown\nfor the padding (dashed)")
    axes[1].title.set_fontsize(10)
    draw_boxes(axes[1], box, color="black", linewidth=2.0)
    draw_boxes(axes[1], expanded, color="black", linewidth=1.2, linestyle="--")
    red = np.array([1.0, 0.0, 0.0])[:, None, None]
    overlay = image * (1 - 0.6 * pasted[None]) + red * 0.6 * pasted[None]
    show_image(axes[2], overlay, "pasted probability (red),\nits 0.5 level (white)")
    axes[2].title.set_fontsize(10)
    draw_contour(axes[2], pasted)
    return fig
