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

from ._weights import build_with_fallback, load_local
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
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True)
        )
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


class PanopticDeepLab(nn.Module):
    """Encoder, ASPP, a decoder fusing two skip levels, and semantic / centre / offset heads.

    Args:
        num_classes: K, stuff and thing classes together (0..K-1).
        in_channels: Image channels.
        encoder_name: A segmentation-models-pytorch encoder name.
        encoder_weights: ``"imagenet"`` or ``None`` (random).
        decoder_channels: Width of ASPP and decoder.
        aspp_rates: Dilation rates of the ASPP 3x3 branches (at stride 32).

    ``forward`` maps ``(N, C, H, W)`` of any size to raw ``(N, K + 3, H, W)``: K class logits, a
    centre logit, and offsets (dy, dx) in pixels. The panoptic task (:mod:`napari_segsuite.tasks.panoptic`)
    owns what these maps mean: their targets, the loss and the post-processing.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 1,
        encoder_name: str = "resnet18",
        encoder_weights: str | None = None,
        decoder_channels: int = 64,
        aspp_rates: tuple[int, ...] = (1, 2, 3),
    ) -> None:
        super().__init__()
        from segmentation_models_pytorch.encoders import get_encoder

        self.num_classes = num_classes
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
            self.center_head[-1].bias.fill_(-4.0)  # type: ignore[operator]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, sizes = pad_to_multiple(x, 32)
        feats = self.encoder(x)
        y = self.up16(self.aspp(feats[5]), feats[4])
        y = self.up4(self.up8(y, feats[3]), feats[2])
        out = torch.cat([self.semantic_head(y), self.center_head(y), self.offset_head(y)], 1)
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return crop_to(out, sizes)


@register(
    "panoptic-deeplab",
    kind="panoptic",
    channels_last=True,
    description="Panoptic-DeepLab (ResNet-18 encoder): classes for every pixel plus one id per countable "
    "object, from centre heatmaps and offsets - stuff and things in one model.",
)
def build_panoptic_deeplab(
    *,
    num_classes: int,
    in_channels: int = 1,
    encoder_name: str = "resnet18",
    weights: str | None = None,
) -> nn.Module:
    """Build a :class:`PanopticDeepLab`. ``weights``: ``None`` (random), ``"imagenet"`` (encoder,
    random where it cannot be downloaded) or a local safetensors file."""
    model = build_with_fallback(
        lambda ew: PanopticDeepLab(
            num_classes=num_classes, in_channels=in_channels, encoder_name=encoder_name, encoder_weights=ew
        ),
        weights,
        "panoptic-deeplab",
    )
    return load_local(model, weights)
