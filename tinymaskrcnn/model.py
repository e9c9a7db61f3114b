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

from . import nn
from .config import MaskRCNNConfig
from .fpn import resnet_fpn_backbone
from .roi_heads import RoIHeads
from .rpn import RegionProposalNetwork
from .transform import Transform, check_images
from .weights import drop_unused_counters, load_checkpoint, save_checkpoint, upgrade_state_dict

LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")
PRETRAINED = {"shapes": "shapes.safetensors"}


class MaskRCNN(nn.Module):
    """Mask R-CNN with torchvision's structure and parameter names.

    cfg: MaskRCNNConfig. rng: np.random.Generator for the initial weights; it is also
    the default source of the samplers' randomness in training (set ``model.rng`` to
    reseed, as the gradient checks do).

    ``model(images, targets)`` in train mode (the default) -> dict of the five losses
    (floats); ``model.backward()`` accumulates the parameters' gradients.
    ``model.eval(); model(images)`` -> list of N dicts: boxes (D, 4) float32 x1y1x2y2,
    labels (D,) int64, scores (D,) float32, masks (D, 1, H, W) float32 probabilities,
    all in the original image's pixels.

    images: list of N (3, H, W) float arrays, RGB in [0, 1] (sizes may differ).
    targets: list of N dicts: boxes (G, 4) float x1y1x2y2 pixels, labels (G,) int in
    [1, num_classes), masks (G, H, W) uint8 in {0, 1}. G = 0 trains as background.
    """

    def __init__(self, cfg: MaskRCNNConfig | None = None, rng=None):
        super().__init__()
        cfg = MaskRCNNConfig() if cfg is None else cfg
        rng = np.random.default_rng() if rng is None else rng
        self.cfg = cfg
        self.rng = rng
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

    def forward(self, images, targets=None):
        images = check_images(images)
        training = self.training
        if training and targets is None:
            raise ValueError(
                "in training mode the model needs targets (a list of dicts with boxes, "
                "labels and masks); call model.eval() for detections"
            )
        self.forget()  # anything kept by a forward whose backward never ran
        self._ready_for_backward = False
        dtype = self.backbone.body.conv1.weight.data.dtype
        images = [im.astype(dtype, copy=False) for im in images]
        original_sizes = [tuple(im.shape[1:]) for im in images]
        batch, image_sizes, targets = self.transform(images, targets if training else None)
        features = self.backbone(batch)
        proposals, rpn_losses = self.rpn(
            features, image_sizes, batch.shape[2:], targets, rng=self.rng
        )
        # P6 only serves the RPN's largest anchors; the RoI heads read P2..P5.
        detections, head_losses = self.roi_heads(
            features[:4], proposals, image_sizes, targets, rng=self.rng
        )
        self.last = {"batch": batch, "image_sizes": image_sizes, "proposals": proposals}
        if training:
            self._ready_for_backward = True
            losses = {**rpn_losses, **head_losses}
            return {name: losses[name] for name in LOSS_NAMES}
        detections = self.transform.postprocess(detections, image_sizes, original_sizes)
        for det in detections:
            det["boxes"] = det["boxes"].astype(np.float32)
            det["scores"] = det["scores"].astype(np.float32)
        return detections

    def backward(self):
        """Accumulate d(sum of the five losses)/d(parameter) into every trainable .grad."""
        if not self._ready_for_backward:
            raise RuntimeError("MaskRCNN.backward needs a forward in training mode first")
        self._ready_for_backward = False
        grad_rpn = self.rpn.backward()  # P2..P6
        grad_heads = self.roi_heads.backward()  # P2..P5
        grads = [a + b for a, b in zip(grad_rpn[:4], grad_heads, strict=True)] + [grad_rpn[4]]
        self.backbone.backward(grads)

    # --- weights -------------------------------------------------------------------------

    def load_state_dict(self, state, strict: bool = True):
        """Load torchvision-named arrays (either key generation).

        BatchNorm step counters (``num_batches_tracked``) this model has no place for
        (frozen batch norm) are ignored.
        """
        state = drop_unused_counters(upgrade_state_dict(dict(state)), set(self.state_dict()))
        return super().load_state_dict(state, strict=strict)

    def save(self, path, metadata: dict | None = None) -> str:
        """Write a safetensors checkpoint with this model's config (atomically)."""
        return save_checkpoint(path, self.state_dict(), self.cfg, metadata)

    @classmethod
    def from_checkpoint(cls, path) -> MaskRCNN:
        """A model in eval mode built from any checkpoint written by ``save``/weights.py."""
        state, cfg, _ = load_checkpoint(path)
        if cfg is None:
            raise ValueError(
                f"checkpoint {os.fspath(path)!r} holds no config; build MaskRCNN(cfg) and "
                "call load_state_dict(weights.load_checkpoint(path)[0]) instead"
            )
        model = cls(cfg, rng=np.random.default_rng(0))
        model.load_state_dict(state)
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
