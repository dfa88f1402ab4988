"""Panoptic-DeepLab (Cheng et al., CVPR 2020): bottom-up panoptic segmentation in one network.

An encoder (any segmentation-models-pytorch encoder; ResNet-18 by default) feeds ASPP and a light
decoder that fuses the stride-16, stride-8 and stride-4 features.
Three heads read the decoder: class logits, a centre heatmap (one Gaussian per thing object) and
offsets from every thing pixel to its object's centre. Objects are formed by
:func:`napari_segsuite.tasks.panoptic.postprocess`: no boxes, no anchors, no fixed object count.

Departures from the paper, to train in minutes on a CPU: one decoder shared by the semantic and
instance heads (the paper has two), 64 decoder channels (256/128), an undilated encoder (output
stride 32, ASPP rates 1, 2, 3; the paper dilates to stride 16 with rates 6, 12, 18 for 1024-px
images: 2.5x the encoder's cost here) and one more skip level (stride 16) in exchange, plain
cross-entropy plus Dice (the paper mines the hardest pixels), and a sigmoid on the heatmap so that
tiles blend in 0..1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..tasks import panoptic
from ._weights import build_with_fallback, load_local
from .base import IGNORE, DenseHeads
from .blocks import ConvNormAct, crop_to, pad_to_multiple
from .registry import register


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, dilated 3x3 branches and image pooling, fused by 1x1."""

    def __init__(self, in_channels: int, out_channels: int, rates: tuple[int, ...] = (1, 2, 3)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvNormAct(in_channels, out_channels, 1)]
            + [ConvNormAct(in_channels, out_channels, 3, dilation=r) for r in rates]
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1),
                                  nn.ReLU(inplace=True))
        self.project = ConvNormAct(out_channels * (len(rates) + 2), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, 1))


class FuseUp(nn.Module):
    """Upsample ``x`` to a skip's size, concatenate the skip reduced by 1x1, and mix by a 3x3 conv."""

    def __init__(self, channels: int, skip_channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = ConvNormAct(skip_channels, reduced, 1)
        self.mix = ConvNormAct(channels + reduced, channels, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.mix(torch.cat([x, self.reduce(skip)], 1))


def _head(channels: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(ConvNormAct(channels, hidden, 3), nn.Conv2d(hidden, out, 1))


class PanopticDeepLab(DenseHeads):
    """Encoder, ASPP, a decoder fusing two skip levels, and semantic / centre / offset heads.

    Args:
        num_classes: K, stuff and thing classes together (0..K-1).
        in_channels: Image channels.
        thing_classes: The countable classes (each object gets a centre and offsets).
        encoder_name: A segmentation-models-pytorch encoder name.
        encoder_weights: ``"imagenet"`` or ``None`` (random).
        decoder_channels: Width of ASPP and decoder.
        aspp_rates: Dilation rates of the ASPP 3x3 branches (at stride 32).
        sigma: Width (px) of the Gaussian around each centre in the heatmap target.
        loss_weights: Weights of the semantic, heatmap and offset losses. The paper's 1, 200, 0.01
            are for offsets of hundreds of pixels; objects here are tens of pixels across.
        dice_weight: Weight of a soft Dice term added to the semantic cross-entropy.

    ``forward`` maps ``(N, C, H, W)`` of any size to raw ``(N, K + 3, H, W)``: K class logits, a
    centre logit, and offsets (dy, dx) in pixels.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 1,
        thing_classes: tuple[int, ...] = (1,),
        encoder_name: str = "resnet18",
        encoder_weights: str | None = None,
        decoder_channels: int = 64,
        aspp_rates: tuple[int, ...] = (1, 2, 3),
        sigma: float = 3.0,
        loss_weights: tuple[float, float, float] = (1.0, 200.0, 0.2),
        dice_weight: float = 0.5,
    ) -> None:
        super().__init__()
        from segmentation_models_pytorch.encoders import get_encoder

        self.thing_classes = tuple(int(c) for c in thing_classes)
        if not all(0 <= c < num_classes for c in self.thing_classes):
            raise ValueError(f"Thing classes {self.thing_classes} must lie in 0..{num_classes - 1}.")
        self.num_classes, self.sigma = num_classes, sigma
        self.loss_weights, self.dice_weight = tuple(loss_weights), dice_weight
        self.encoder = get_encoder(encoder_name, in_channels=in_channels, depth=5, weights=encoder_weights)
        ch = self.encoder.out_channels  # strides 1, 2, 4, 8, 16, 32
        d = decoder_channels
        self.aspp = ASPP(ch[5], d, aspp_rates)
        self.up16 = FuseUp(d, ch[4], 64)
        self.up8 = FuseUp(d, ch[3], 32)
        self.up4 = FuseUp(d, ch[2], 16)
        self.semantic_head = _head(d, d, num_classes)
        self.center_head = _head(d, 32, 1)
        self.offset_head = _head(d, 32, 2)
        with torch.no_grad():  # start near an empty heatmap, as a detector's prior
            self.center_head[-1].bias.fill_(-4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, sizes = pad_to_multiple(x, 32)
        feats = self.encoder(x)
        y = self.up16(self.aspp(feats[5]), feats[4])
        y = self.up4(self.up8(y, feats[3]), feats[2])
        out = torch.cat([self.semantic_head(y), self.center_head(y), self.offset_head(y)], 1)
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return crop_to(out, sizes)

    def activate(self, out: torch.Tensor) -> torch.Tensor:
        """Softmax over the K class logits, sigmoid on the centre heatmap, offsets unchanged."""
        k = self.num_classes
        return torch.cat([out[:, :k].softmax(1), out[:, k:k + 1].sigmoid(), out[:, k + 1:]], 1)

    def loss_from_output(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (+ Dice) on classes, weighted MSE on the heatmap, L1 on thing offsets."""
        k = self.num_classes
        y = y.long()
        t = panoptic.targets(y, self.thing_classes, self.sigma)
        logits = out[:, :k]
        sem = y[:, 1]
        ce = F.cross_entropy(logits, sem, ignore_index=IGNORE) if (sem != IGNORE).any() else logits.sum() * 0
        if self.dice_weight:
            ce = ce + self.dice_weight * _dice(logits, sem)
        heat = out[:, k:k + 1].sigmoid()
        mse = (t.center_weight * (heat - t.center) ** 2).sum() / t.center_weight.sum().clamp(min=1)
        l1 = (t.offset_weight * (out[:, k + 1:] - t.offset).abs()).sum() / t.offset_weight.sum().clamp(min=1)
        w_sem, w_center, w_offset = self.loss_weights
        return w_sem * ce + w_center * mse + w_offset * l1


def _dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the classes present in the batch (known pixels only)."""
    k = logits.shape[1]
    known = (target != IGNORE)[:, None].float()
    probs = logits.softmax(1) * known
    onehot = F.one_hot(target.clamp(min=0), k).movedim(-1, 1).float() * known
    dims = (0, 2, 3)
    inter, total = (probs * onehot).sum(dims), (probs + onehot).sum(dims)
    present = onehot.sum(dims) > 0
    if not present.any():
        return logits.sum() * 0
    return 1 - (2 * inter[present] / total[present].clamp(min=1e-6)).mean()


@register(
    "panoptic-deeplab",
    kind="panoptic",
    description="Panoptic-DeepLab (ResNet-18 encoder): classes for every pixel plus one id per countable "
                "object, from centre heatmaps and offsets - stuff and things in one model.",
)
def build_panoptic_deeplab(
    *,
    num_classes: int,
    in_channels: int = 1,
    thing_classes: tuple[int, ...] = (1,),
    encoder_name: str = "resnet18",
    weights: str | None = None,
) -> nn.Module:
    """Build a :class:`PanopticDeepLab`. ``weights``: ``None`` (random), ``"imagenet"`` (encoder,
    random where it cannot be downloaded) or a local safetensors file."""
    model = build_with_fallback(
        lambda ew: PanopticDeepLab(num_classes=num_classes, in_channels=in_channels,
                                   thing_classes=tuple(thing_classes), encoder_name=encoder_name, encoder_weights=ew),
        weights, "panoptic-deeplab",
    )
    return load_local(model, weights)
