"""Mask R-CNN: the stages wired together (He et al., 2017, Fig. 1;
docs/architecture.md, Stage map and data flow).

    images -> transform -> backbone (ResNet + FPN) -> RPN -> RoI heads (box, mask)
           -> transform.postprocess -> detections

Training mode returns torchvision's five losses; ``backward()`` then fills the ``.grad``
of every trainable parameter with the gradient of their sum (Mask R-CNN Eq. 1 plus the
RPN's two terms). Evaluation mode returns, per image, boxes, labels, scores and soft
masks in the original image's pixels.

Shapes used below:
    N: images      H, W: one image's original size     D: detections of one image
    G: ground-truth objects of one image
"""

from __future__ import annotations

import os

import numpy as np

from . import kernels, nn
from .config import MaskRCNNConfig
from .fpn import resnet_fpn_backbone
from .roi_heads import RoIHeads
from .rpn import RegionProposalNetwork
from .transform import Transform, check_images
from .weights import (
    check_class_names,
    class_names_of,
    fit_state_dict,
    load_checkpoint,
    save_checkpoint,
)

LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")

# The stage boundaries ``forward(..., trace=...)`` reports, in order, and what each passes
# (lists hold one entry per image; frames as in docs/architecture.md, Stage map and data flow):
STAGES = {
    "transform": "batch (N, 3, Hp, Wp), image_sizes [(h, w)], original_sizes [(H, W)], "
    "targets (training: resized frame) or None",
    "backbone": "features [C2..C5] (N, C_l, H_l, W_l)",
    "fpn": "features [P2..P6] (N, D, H_l, W_l)",
    "anchors": "anchors (M, 4), num_per_level [L ints], strides [(sh, sw)]",
    "rpn_head": "objectness (N, M) logits, deltas (N, M, 4)",
    "proposal_candidates": "boxes [(Q, 4)], scores [(Q,)], levels [(Q,)]: before NMS",
    "proposals": "boxes [(P, 4)], scores [(P,)], nms_keep [(Q',)] indices of the candidates "
    "NMS kept, before the top-n cut",
    "matching": "training only: anchors (M, 4), labels [(M,)] 1/0/-1, positive [(M,)] and "
    "negative [(M,)] masks of the sampled anchors",
    "roi_features": "rois [(K_i, 4)], features (K, D, S, S), labels (K,) and matched "
    "[(K_i,)] in training (else None)",
    "box_head": "class_logits (K, C), box_regression (K, 4C)",
    "detections_before_nms": "inference only: boxes [(E, 4)], scores [(E,)], labels [(E,)]",
    "detections": "inference only: detections [dict boxes (D, 4), scores, labels], resized frame",
    "mask_logits": "mask_logits (K', C, M, M), boxes [(K'_i, 4)], labels (K',) "
    "(and targets (K', M, M) in training)",
    "masks": "inference only: detections [dict ... masks (D, 1, H, W)], original frame",
    "losses": "training only: the five losses (floats)",
}
PRETRAINED = {"shapes": "shapes.safetensors"}


class MaskRCNN(nn.Module):
    """Mask R-CNN with torchvision's structure and parameter names.

    cfg: MaskRCNNConfig. rng: the model's one np.random.Generator (None: seeded with 0):
    it draws the initial weights, then every sample the RPN and RoI heads take in
    training (set ``model.rng`` to reseed, as the gradient checks do).
    class_names: one name per label, ``cfg.num_classes`` of them (index 0 the
    background), saved with the checkpoint; None gives ``class k``.

    ``model(images, targets)`` in train mode (the default) -> dict of the five losses
    (floats); ``model.backward()`` accumulates the parameters' gradients.
    ``model.eval(); model(images)`` -> list of N dicts: boxes (D, 4) float32 x1y1x2y2,
    labels (D,) int64, scores (D,) float32, masks (D, 1, H, W) float32 probabilities,
    all in the original image's pixels.

    images: list of N (3, H, W) float arrays, RGB in [0, 1] (sizes may differ).
    targets: list of N dicts: boxes (G, 4) float x1y1x2y2 pixels, labels (G,) int in
    [1, num_classes), masks (G, H, W) uint8 in {0, 1}. G = 0 trains as background.
    trace: None, or a function ``trace(stage, **arrays)`` called once per call at each
    stage boundary, in the order of ``STAGES`` (see there for what each passes); what
    it receives is the model's own arrays, not copies: read, don't write. Under the
    "cuda" backend in inference, the backbone's and the FPN's maps are device arrays
    (``kernels.to_host`` copies one over).
    """

    def __init__(self, cfg: MaskRCNNConfig | None = None, rng=None, class_names=None):
        super().__init__()
        cfg = MaskRCNNConfig() if cfg is None else cfg
        rng = nn.init.generator(rng)
        self.cfg = cfg
        self.rng = rng
        self.class_names = check_class_names(class_names, cfg.num_classes)
        self.transform = Transform(cfg)
        self.backbone = resnet_fpn_backbone(
            cfg.backbone,
            width=cfg.backbone_width,
            trainable_layers=cfg.trainable_backbone_layers,
            out_channels=cfg.fpn_out_channels,
            norm="frozen" if cfg.norm_layer == "frozen_batch_norm" else "batch",
            frozen_bn_eps=cfg.frozen_bn_eps,
            rng=rng,
        )
        self.rpn = RegionProposalNetwork(cfg, cfg.fpn_out_channels, rng=rng)
        self.roi_heads = RoIHeads(cfg, cfg.fpn_out_channels, rng=rng)
        self._ready_for_backward = False

    # --- forward and backward ------------------------------------------------------

    def forward(self, images, targets=None, trace=None):
        images = check_images(images)
        training = self.training
        if training and targets is None:
            raise ValueError(
                "in training mode the model needs targets (a list of dicts with boxes, "
                "labels and masks); call model.eval() for detections"
            )
        trace = trace or (lambda stage, **arrays: None)
        self.forget()  # anything kept by a forward whose backward never ran
        self._ready_for_backward = False
        dtype = self.backbone.body.conv1.weight.data.dtype
        images = [im.astype(dtype, copy=False) for im in images]
        original_sizes = [tuple(im.shape[1:]) for im in images]
        batch, image_sizes, targets = self.transform(
            images, targets if training else None, checked=True
        )
        trace(
            "transform",
            batch=batch,
            image_sizes=image_sizes,
            original_sizes=original_sizes,
            targets=targets,
        )
        if self.backbone.body.folds():
            # Inference: every layer of the folded backbone, the FPN and the RPN head has
            # a CUDA kernel for device arrays, so under "cuda" the maps stay on the GPU
            # from the image to the RoI features; the stages bring back what NumPy reads.
            batch = kernels.resident(batch)
        features = self.backbone(batch, trace=trace)
        proposals, rpn_losses = self.rpn(
            features, image_sizes, batch.shape[2:], targets, rng=self.rng, trace=trace
        )
        # P6 only serves the RPN's largest anchors; the RoI heads read P2..P5.
        detections, head_losses = self.roi_heads(
            features[:4], proposals, image_sizes, targets, rng=self.rng, trace=trace
        )
        if training:
            self._ready_for_backward = True
            losses = {**rpn_losses, **head_losses}
            losses = {name: losses[name] for name in LOSS_NAMES}
            trace("losses", **losses)
            return losses
        detections = self.transform.postprocess(detections, image_sizes, original_sizes)
        for det in detections:
            det["boxes"] = det["boxes"].astype(np.float32)
            det["scores"] = det["scores"].astype(np.float32)
        trace("masks", detections=detections)
        return detections

    def backward(self, loss_weights=None):
        """Accumulate d(sum of the five losses)/d(parameter) into every trainable .grad.

        loss_weights: None, or a dict loss name -> factor (LOSS_NAMES; absent names 1.0):
        the gradient is then that of sum_k factor_k * loss_k. Data-parallel training
        (distributed.py) weighs each worker's losses by its share of the batch's samples.
        """
        if not self._ready_for_backward:
            raise RuntimeError("MaskRCNN.backward needs a forward in training mode first")
        weights = dict.fromkeys(LOSS_NAMES, 1.0)
        unknown = sorted(set(loss_weights or {}) - set(LOSS_NAMES))
        if unknown:
            raise ValueError(
                f"loss_weights names unknown losses {unknown}; the losses are {LOSS_NAMES}"
            )
        weights.update({k: float(v) for k, v in (loss_weights or {}).items()})
        self._ready_for_backward = False
        grad_rpn = self.rpn.backward(weights)  # P2..P6
        grad_heads = self.roi_heads.backward(weights)  # P2..P5
        grads = [a + b for a, b in zip(grad_rpn[:4], grad_heads, strict=True)] + [grad_rpn[4]]
        self.backbone.backward(grads, image_grad=False)  # nothing reads the image's

    # --- weights -------------------------------------------------------------------------

    def save(self, path, metadata: dict | None = None) -> str:
        """Write a safetensors checkpoint with this model's config and class names
        (atomically)."""
        return save_checkpoint(path, self.state_dict(), self.cfg, metadata, self.class_names)

    @classmethod
    def from_checkpoint(cls, path) -> MaskRCNN:
        """A model in eval mode built from any checkpoint written by ``save``/weights.py,
        a training run's ``checkpoint.safetensors`` included (its optimizer state is
        left out)."""
        state, cfg, metadata = load_checkpoint(path)
        if cfg is None:
            raise ValueError(
                f"checkpoint {os.fspath(path)!r} holds no config; build MaskRCNN(cfg) and "
                "call load_state_dict(weights.load_checkpoint(path)[0]) instead"
            )
        names = class_names_of(metadata, cfg, path)
        model = cls(cfg, rng=np.random.default_rng(0), class_names=names)
        fit_state_dict(model, state, path)
        return model.eval()

    @classmethod
    def from_pretrained(cls, name: str = "shapes") -> MaskRCNN:
        """A model shipped inside the package (``tinymaskrcnn/pretrained/``)."""
        if name not in PRETRAINED:
            raise ValueError(f"no pretrained model {name!r}; available: {', '.join(PRETRAINED)}")
        path = os.path.join(os.path.dirname(__file__), "pretrained", PRETRAINED[name])
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"the pretrained {name!r} model is not in this installation ({path}); "
                "train one with `tinymaskrcnn train`"
            )
        return cls.from_checkpoint(path)
