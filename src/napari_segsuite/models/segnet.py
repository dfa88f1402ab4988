"""SegNet (Badrinarayanan et al., 2017): a symmetric VGG-style encoder-decoder whose decoder
upsamples with the encoder's max-pooling indices; no skip connections, no learned upsampling
(``upsample="unpool"``, the default; the other two kinds are selectable for comparison)."""

from __future__ import annotations

import torch
from torch import nn

from ._weights import load_local
from .blocks import ConvNormAct, PadTo, Upsample, VGGEncoder
from .registry import register


class SegNet(nn.Module):
    def __init__(
        self, *, in_channels: int = 1, num_classes: int = 2, base_filters: int = 16, upsample: str = "unpool"
    ) -> None:
        super().__init__()
        w = tuple(base_filters * m for m in (1, 2, 4, 8, 8))
        convs = (2, 2, 3, 3, 3)
        self.encoder = VGGEncoder(in_channels, w, convs)
        ups, decs = [], []
        for i in reversed(range(5)):
            out = w[i - 1] if i > 0 else w[0]
            ups.append(Upsample(w[i], w[i], upsample))
            layers = [ConvNormAct(w[i], w[i]) for _ in range(convs[i] - 1)] + [ConvNormAct(w[i], out)]
            decs.append(nn.Sequential(*layers))
        self.ups, self.decoders = nn.ModuleList(ups), nn.ModuleList(decs)
        self.head = nn.Conv2d(w[0], num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, idxs, sizes = self.encoder(x)
        y = feats[-1]
        for up, dec, idx, size in zip(self.ups, self.decoders, reversed(idxs), reversed(sizes)):
            y = dec(up(y, idx, output_size=size))
        return self.head(y)


@register(
    "segnet",
    kind="semantic",
    channels_last=True,
    description="SegNet: VGG-style encoder-decoder upsampling with the pooling indices - for simple data with large objects.",
)
def build_segnet(
    *,
    num_classes: int,
    in_channels: int = 1,
    base_filters: int = 16,
    upsample: str = "unpool",
    weights: str | None = None,
) -> nn.Module:
    return load_local(
        PadTo(
            SegNet(in_channels=in_channels, num_classes=num_classes, base_filters=base_filters, upsample=upsample), 32
        ),
        weights,
    )
