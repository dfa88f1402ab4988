"""PSPNet (Zhao et al., 2017): a dilated residual encoder (output stride 8) and the pyramid pooling
module (bins 1, 2, 3, 6) for context at many scales. The encoder comes from
segmentation-models-pytorch (any of its ResNet-style encoders by name); the head is written here."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._weights import build_with_fallback, load_local
from .blocks import ConvNormAct, PadTo, PyramidPooling
from .registry import register


class PSPNet(nn.Module):
    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 2,
        encoder_name: str = "resnet18",
        encoder_weights: str | None = None,
        bins: tuple[int, ...] = (1, 2, 3, 6),
    ) -> None:
        super().__init__()
        from segmentation_models_pytorch.encoders import get_encoder

        self.encoder = get_encoder(
            encoder_name, in_channels=in_channels, depth=5, weights=encoder_weights, output_stride=8
        )
        c = self.encoder.out_channels[-1]
        self.ppm = PyramidPooling(c, bins)
        self.head = nn.Sequential(
            ConvNormAct(self.ppm.out_channels, 256), nn.Dropout2d(0.1), nn.Conv2d(256, num_classes, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        y = self.head(self.ppm(self.encoder(x)[-1]))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


@register(
    "pspnet",
    kind="semantic",
    description="PSPNet: dilated ResNet encoder + pyramid pooling - scenes with objects at many sizes (input ~500x500).",
)
def build_pspnet(
    *, num_classes: int, in_channels: int = 1, encoder_name: str = "resnet18", weights: str | None = None
) -> nn.Module:
    net = build_with_fallback(
        lambda ew: PSPNet(
            in_channels=in_channels, num_classes=num_classes, encoder_name=encoder_name, encoder_weights=ew
        ),
        weights,
        "pspnet",
    )
    return load_local(PadTo(net, 8), weights)
