"""FCN-32s, FCN-16s and FCN-8s (Long et al., 2015) on a VGG-style encoder.

The classifier is convolutional (``fc6`` a 7x7 conv, ``fc7`` a 1x1 conv); class scores are
upsampled by transposed convolutions initialised to bilinear interpolation, and FCN-16s/8s add the
scores of pool4 (and pool3) by element-wise addition before the last upsampling.
"""

from __future__ import annotations

import torch
from torch import nn

from ._weights import load_local
from .blocks import ConvNormAct, PadTo, VGGEncoder, bilinear_transpose
from .registry import register


class FCN(nn.Module):
    """Args:
        variant: 32, 16 or 8: the stride of the last upsampling (and so which skips are fused).
        base_filters: Channels of the first encoder stage (stages double up to 8x, VGG-style).
        head_channels: Channels of the convolutional classifier (fc6/fc7).

    Input height and width must be multiples of 32 (the registered builders wrap it in :class:`PadTo`).
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 2,
        variant: int = 8,
        base_filters: int = 16,
        head_channels: int = 256,
    ) -> None:
        super().__init__()
        if variant not in (32, 16, 8):
            raise ValueError(f"FCN variant must be 32, 16 or 8, got {variant}.")
        self.variant = variant
        w = tuple(base_filters * m for m in (1, 2, 4, 8, 8))
        self.encoder = VGGEncoder(in_channels, w)
        self.classifier = nn.Sequential(
            ConvNormAct(w[4], head_channels, 7),
            nn.Dropout2d(0.3),
            ConvNormAct(head_channels, head_channels, 1),
            nn.Dropout2d(0.3),
            nn.Conv2d(head_channels, num_classes, 1),
        )
        k = num_classes
        if variant == 32:
            self.up_final = bilinear_transpose(k, 32)
        else:
            self.score_pool4 = nn.Conv2d(w[3], k, 1)
            self.up2_a = bilinear_transpose(k, 2)
            if variant == 8:
                self.score_pool3 = nn.Conv2d(w[2], k, 1)
                self.up2_b = bilinear_transpose(k, 2)
            self.up_final = bilinear_transpose(k, variant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, _, _ = self.encoder(x)
        score = self.classifier(feats[4])  # stride 32
        if self.variant <= 16:
            score = self.up2_a(score) + self.score_pool4(feats[3])  # stride 16
        if self.variant == 8:
            score = self.up2_b(score) + self.score_pool3(feats[2])  # stride 8
        return self.up_final(score)


def _make_fcn(variant: int):
    def build(
        *,
        num_classes: int,
        in_channels: int = 1,
        base_filters: int = 16,
        head_channels: int = 256,
        weights: str | None = None,
    ) -> nn.Module:
        net = FCN(
            in_channels=in_channels,
            num_classes=num_classes,
            variant=variant,
            base_filters=base_filters,
            head_channels=head_channels,
        )
        return load_local(PadTo(net, 32), weights)

    return build


_GUIDE = "for simple data with few, large objects"
_FCNS = {
    32: "FCN-32s: VGG-style encoder, one 32x upsampling (coarse)",
    16: "FCN-16s: FCN-32s plus the pool4 skip",
    8: "FCN-8s: pool4 and pool3 skips, the finest FCN",
}
for _stride, _desc in _FCNS.items():
    register(f"fcn{_stride}s", kind="semantic", channels_last=True, description=f"{_desc} - {_GUIDE}.")(
        _make_fcn(_stride)
    )
