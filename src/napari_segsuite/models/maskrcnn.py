"""Mask R-CNN (He et al., 2017) from torchvision as an :class:`~.base.ObjectModel`.

The torchvision model is built offline (random weights) and adapted to microscopy:

- any number of input channels (the ResNet's first convolution is replaced when it is not 3);
- images arrive already normalised by the engine, so the model's own normalisation is the identity
  (mean 0, std 1 per channel) and there is **no resizing**: torchvision's transform scales every
  image to a short side of 800 pixels by default, which would blow up 128-pixel tiles six-fold and
  change the object sizes the anchors were chosen for. No ``min_size``/``max_size`` pair keeps every
  input size (the scale is ``min(min_size / short, max_size / long)``, one number for all inputs),
  so :class:`_KeepSizeTransform` subclasses torchvision's transform with an identity resize;
- small anchors (8 to 128 pixels, three aspect ratios), up to 500 detections per image and more RPN
  proposals, for dense fields of small cells;
- CPU-friendly RoI heads: 64 sampled RoIs per image in training (torchvision: 512) and a mask head
  half as wide; with 256-wide heads and 512 RoIs the heads, not the backbone, took most of a step;
- batch norm in the backbone (torchvision uses frozen batch norm, meant for pretrained weights; with
  random weights it would be a fixed identity and training from scratch would be slow).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN as TorchvisionMaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from ._weights import load_local
from .base import IGNORE, Detections, ObjectModel
from .registry import register

BACKBONES = ("resnet18", "resnet34", "resnet50")
ANCHOR_SIZES = ((8,), (16,), (32,), (64,), (128,))  # one size per FPN level (strides 4 to 64)
ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * len(ANCHOR_SIZES)
MASK_HEAD_LAYERS = (128, 128, 128, 128)  # half torchvision's width (256): ~3x cheaper, the head dominated CPU time
MIN_BOX_SIDE = 2  # objects narrower or shorter than this (slivers cut by the crop) are not targets


class _KeepSizeTransform(GeneralizedRCNNTransform):
    """torchvision's input transform without the resize: images keep their size, boxes their scale.

    Batching still pads to a multiple of ``size_divisible`` (bottom/right); detections are reported
    in the input's coordinates because the recorded image size is the unpadded one.
    """

    def resize(
        self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        return image, target


def _build_net(num_classes: int, in_channels: int, backbone: str) -> TorchvisionMaskRCNN:
    """The torchvision Mask R-CNN with the settings described in this module's docstring."""
    if backbone not in BACKBONES:
        raise ValueError(f"Unknown backbone {backbone!r}; use one of {', '.join(BACKBONES)}.")
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background and must be at least 2, not {num_classes}.")
    body = resnet_fpn_backbone(backbone_name=backbone, weights=None, trainable_layers=5, norm_layer=nn.BatchNorm2d)
    if in_channels != 3:
        old = body.body.conv1
        body.body.conv1 = nn.Conv2d(
            in_channels,
            old.out_channels,
            kernel_size=old.kernel_size,
            stride=old.stride,
            padding=old.padding,
            bias=False,
        )
        nn.init.kaiming_normal_(body.body.conv1.weight, mode="fan_out", nonlinearity="relu")
    net = TorchvisionMaskRCNN(
        body,
        rpn_anchor_generator=AnchorGenerator(ANCHOR_SIZES, ASPECT_RATIOS),
        rpn_pre_nms_top_n_train=3000,
        rpn_post_nms_top_n_train=2000,
        rpn_pre_nms_top_n_test=3000,
        rpn_post_nms_top_n_test=2000,
        box_score_thresh=0.0,  # detect() sets its own threshold per call
        box_detections_per_img=500,
        box_batch_size_per_image=64,  # sampled RoIs per image (torchvision: 512); 16 positives at most, CPU-friendly
        box_predictor=FastRCNNPredictor(1024, num_classes),  # 1024: the width of torchvision's box head
        mask_head=MaskRCNNHeads(body.out_channels, MASK_HEAD_LAYERS, dilation=1),
        mask_predictor=MaskRCNNPredictor(MASK_HEAD_LAYERS[-1], 128, num_classes),
        num_classes=None,
    )
    mean, std = [0.0] * in_channels, [1.0] * in_channels
    net.transform = _KeepSizeTransform(min_size=1, max_size=1, image_mean=mean, image_std=std, size_divisible=32)
    return net


def _object_targets(ids: torch.Tensor, cls: torch.Tensor) -> dict[str, torch.Tensor]:
    """torchvision targets (``boxes``, ``labels``, ``masks``) of one image's id and class maps.

    Args:
        ids: ``(H, W)`` object ids (0 background, -1 unknown).
        cls: ``(H, W)`` class per pixel (-1 unknown).

    Objects whose box is less than :data:`MIN_BOX_SIDE` pixels wide or high are left out. Boxes are
    ``(x0, y0, x1, y1)`` with exclusive ends, the pixel-edge convention of RoIAlign.
    """
    h, w = ids.shape
    uniq = torch.unique(ids)
    uniq = uniq[uniq > 0]
    masks = ids[None] == uniq[:, None, None]  # (n, H, W)
    rows, cols = masks.any(2), masks.any(1)  # (n, H), (n, W)
    ar_y = torch.arange(h, device=ids.device)
    ar_x = torch.arange(w, device=ids.device)
    y0 = torch.where(rows, ar_y, h).amin(1)
    y1 = torch.where(rows, ar_y, -1).amax(1) + 1
    x0 = torch.where(cols, ar_x, w).amin(1)
    x1 = torch.where(cols, ar_x, -1).amax(1) + 1
    keep = ((x1 - x0) >= MIN_BOX_SIDE) & ((y1 - y0) >= MIN_BOX_SIDE)
    masks = masks[keep]
    boxes = torch.stack([x0, y0, x1, y1], 1)[keep].float()
    labels = torch.stack([_majority_class(cls[m]) for m in masks]) if len(masks) else ids.new_zeros(0)
    return {"boxes": boxes.reshape(-1, 4), "labels": labels.long(), "masks": masks.to(torch.uint8)}


def _majority_class(values: torch.Tensor) -> torch.Tensor:
    """The most common positive class among one object's pixels (1 when none is known)."""
    values = values[values > 0]
    if not len(values):
        return torch.ones((), dtype=torch.long, device=values.device)
    return torch.bincount(values).argmax()


class MaskRCNN(ObjectModel):
    """torchvision's Mask R-CNN behind the :class:`~.base.ObjectModel` contract.

    Args:
        num_classes: Classes including the background (2 for one kind of object).
        in_channels: Image channels.
        backbone: ``"resnet18"`` (default, fast on a CPU), ``"resnet34"`` or ``"resnet50"``.

    torchvision decides from its own ``training`` flags whether a forward returns losses or
    detections. :meth:`loss` always asks for losses and :meth:`detect` always for detections, whatever
    mode this module is in; the backbone's batch norm follows this module's mode in :meth:`loss`
    (so a validation loss in eval mode leaves the running statistics alone) and is in eval mode in
    :meth:`detect`.
    """

    #: The largest anchor is 128 pixels (up to ~180 along its long side with aspect ratio 2).
    max_object_size = 128

    def __init__(self, *, num_classes: int = 2, in_channels: int = 1, backbone: str = "resnet18") -> None:
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        self.net = _build_net(num_classes, in_channels, backbone)

    @contextmanager
    def _heads_mode(self, training: bool) -> Iterator[None]:
        """Temporarily set the flags that make torchvision return losses (True) or detections."""
        parts = (self.net, self.net.transform, self.net.rpn, self.net.roi_heads)
        before = [p.training for p in parts]
        for p in parts:
            p.training = training
        try:
            yield
        finally:
            for p, b in zip(parts, before):
                p.training = b

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Sum of torchvision's five losses (RPN objectness and box, classifier, box, mask).

        Images with no known pixel are left out of the batch; if none is left, the loss is a zero
        still connected to the parameters.
        """
        known = (y[:, 0] != IGNORE).flatten(1).any(1)
        if not bool(known.any()):
            return torch.stack([p.sum() for p in self.parameters()]).sum() * 0.0
        targets = [_object_targets(ids, cls) for ids, cls in zip(y[known, 0], y[known, 1])]
        with self._heads_mode(True):
            losses = self.net(list(x[known]), targets)
        return sum(losses.values())

    @torch.no_grad()
    def detect(self, x: torch.Tensor, score_threshold: float = 0.5) -> list[Detections]:
        """Objects with a score of at least ``score_threshold``, masks thresholded at 0.5, best first."""
        was_training = self.training
        roi = self.net.roi_heads
        old_thresh = roi.score_thresh
        self.eval()
        roi.score_thresh = score_threshold
        try:
            raw = self.net(list(x))
        finally:
            roi.score_thresh = old_thresh
            self.train(was_training)
        return [_to_detections(r, score_threshold) for r in raw]


def _to_detections(raw: dict[str, torch.Tensor], score_threshold: float) -> Detections:
    """torchvision's output for one image to :class:`~.base.Detections` (empty masks dropped)."""
    masks = raw["masks"][:, 0] > 0.5
    keep = (raw["scores"] >= score_threshold) & masks.flatten(1).any(1)
    scores = raw["scores"][keep]
    order = torch.argsort(scores, descending=True)
    return Detections(masks=masks[keep][order], scores=scores[order], classes=raw["labels"][keep][order].long())


@register(
    "maskrcnn",
    kind="instance",
    divisible_by=32,
    objects=True,
    training={"patch_size": 128, "lr": 1e-3},
    description="Mask R-CNN (torchvision, ResNet-18 FPN, small anchors): boxes then masks - "
    "objects that overlap or are far apart, several object classes.",
)
def build_maskrcnn(
    *, num_classes: int = 2, in_channels: int = 1, backbone: str = "resnet18", weights: str | None = None
) -> nn.Module:
    """Build a :class:`MaskRCNN`. ``weights`` is a local safetensors file or ``None`` (random init)."""
    model = MaskRCNN(num_classes=num_classes, in_channels=in_channels, backbone=backbone)
    return load_local(model, weights)
