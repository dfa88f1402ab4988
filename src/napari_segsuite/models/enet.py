"""ENet (Paszke et al., 2016): a tiny, fast encoder-decoder for real-time segmentation.

An initial block (a strided 3x3 conv concatenated with max pooling), bottlenecks (regular,
downsampling with pooling indices, dilated 2/4/8/16, asymmetric 5, upsampling by max-unpooling),
PReLU activations, spatial dropout and a small decoder; about 0.36 M parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._weights import load_local
from .blocks import AsymmetricConv, PadTo
from .registry import register


class InitialBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(torch.cat([self.conv(x), self.pool(x)], 1)))


def _cba(cin: int, cout: int, k=1, stride=1, padding=0, dilation=1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.PReLU(cout),
    )


class Bottleneck(nn.Module):
    """ENet bottleneck: 1x1 reduce -> main conv -> 1x1 expand -> spatial dropout, plus the main branch.

    Args:
        kind: ``"regular"``, ``"dilated"``, ``"asymmetric"``, ``"down"`` (2x2 strided reduce; main branch
            max-pools with indices and zero-pads channels) or ``"up"`` (transposed conv; main branch
            max-unpools with the indices of the matching ``"down"``).
    """

    def __init__(
        self,
        cin: int,
        cout: int | None = None,
        kind: str = "regular",
        dilation: int = 1,
        dropout: float = 0.1,
        ratio: int = 4,
    ) -> None:
        super().__init__()
        cout = cout or cin
        mid = cin // ratio
        self.kind = kind
        if kind == "down":
            self.reduce = _cba(cin, mid, 2, stride=2)
            self.pool = nn.MaxPool2d(2, return_indices=True)
        else:
            self.reduce = _cba(cin, mid)
        if kind == "up":
            self.main_proj = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.unpool = nn.MaxUnpool2d(2)
            self.conv = nn.Sequential(
                nn.ConvTranspose2d(mid, mid, 3, stride=2, padding=1, output_padding=1, bias=False),
                nn.BatchNorm2d(mid),
                nn.PReLU(mid),
            )
        elif kind == "asymmetric":
            self.conv = nn.Sequential(AsymmetricConv(mid, mid, 5), nn.BatchNorm2d(mid), nn.PReLU(mid))
        else:
            d = dilation if kind == "dilated" else 1
            self.conv = _cba(mid, mid, 3, padding=d, dilation=d)
        self.expand = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.drop = nn.Dropout2d(dropout)
        self.act = nn.PReLU(cout)
        self.cout = cout

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None, output_size=None):
        ext = self.drop(self.expand(self.conv(self.reduce(x))))
        if self.kind == "down":
            main, idx = self.pool(x)
            main = F.pad(main, (0, 0, 0, 0, 0, self.cout - main.shape[1]))
            return self.act(main + ext), idx
        if self.kind == "up":
            main = self.unpool(self.main_proj(x), indices, output_size=output_size)
            return self.act(main + ext)
        return self.act(x + ext)


class ENet(nn.Module):
    """ENet for ``(N, C, H, W)`` input with H and W multiples of 8 (the builder pads any size)."""

    def __init__(self, *, in_channels: int = 1, num_classes: int = 2) -> None:
        super().__init__()
        self.initial = InitialBlock(in_channels, 16)
        self.down1 = Bottleneck(16, 64, "down", dropout=0.01)
        self.stage1 = nn.Sequential(*[Bottleneck(64, dropout=0.01) for _ in range(4)])
        self.down2 = Bottleneck(64, 128, "down")

        def stage() -> nn.Sequential:
            return nn.Sequential(
                Bottleneck(128),
                Bottleneck(128, kind="dilated", dilation=2),
                Bottleneck(128, kind="asymmetric"),
                Bottleneck(128, kind="dilated", dilation=4),
                Bottleneck(128),
                Bottleneck(128, kind="dilated", dilation=8),
                Bottleneck(128, kind="asymmetric"),
                Bottleneck(128, kind="dilated", dilation=16),
            )

        self.stage2, self.stage3 = stage(), stage()
        self.up4 = Bottleneck(128, 64, "up")
        self.stage4 = nn.Sequential(Bottleneck(64), Bottleneck(64))
        self.up5 = Bottleneck(64, 16, "up")
        self.stage5 = Bottleneck(16)
        self.full = nn.ConvTranspose2d(16, num_classes, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.initial(x)
        x1, idx1 = self.down1(x0)
        x1 = self.stage1(x1)
        x2, idx2 = self.down2(x1)
        x2 = self.stage3(self.stage2(x2))
        y = self.stage4(self.up4(x2, idx2, output_size=x1.shape))
        y = self.stage5(self.up5(y, idx1, output_size=x0.shape))
        return self.full(y)


@register(
    "enet",
    kind="semantic",
    has_encoder=False,
    description="ENet: ~0.36 M parameters, the fastest model here - where speed matters.",
)
def build_enet(*, num_classes: int, in_channels: int = 1, weights: str | None = None) -> nn.Module:
    return load_local(PadTo(ENet(in_channels=in_channels, num_classes=num_classes), 8), weights)
