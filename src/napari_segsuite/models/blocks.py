"""Building blocks shared by the architectures: conv-norm-act and the three upsampling kinds.

Every block takes ``spatial_dims`` (2 or 3) instead of coming in a 2D and a 3D class.
Tensors are ``(N, C, H, W)`` in 2D and ``(N, C, D, H, W)`` in 3D.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

UpsampleKind = Literal["transpose", "interp", "unpool"]
UPSAMPLE_KINDS: tuple[str, ...] = ("transpose", "interp", "unpool")


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    return {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


def norm_nd(spatial_dims: int) -> type[nn.Module]:
    return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims]


def maxpool_nd(spatial_dims: int) -> type[nn.Module]:
    return {2: nn.MaxPool2d, 3: nn.MaxPool3d}[spatial_dims]


class ConvNormAct(nn.Sequential):
    """Convolution, batch norm (optional) and ReLU; 'same' padding for odd kernels."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        dilation: int = 1,
        norm: bool = True,
        spatial_dims: int = 2,
    ) -> None:
        pad = dilation * (kernel_size - 1) // 2
        super().__init__(
            conv_nd(spatial_dims)(
                in_channels, out_channels, kernel_size, padding=pad, dilation=dilation, bias=not norm
            ),
            norm_nd(spatial_dims)(out_channels) if norm else nn.Identity(),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two 3x3 conv-norm-act layers: the unit of each UNet level."""

    def __init__(self, in_channels: int, out_channels: int, *, norm: bool = True, spatial_dims: int = 2):
        super().__init__(
            ConvNormAct(in_channels, out_channels, norm=norm, spatial_dims=spatial_dims),
            ConvNormAct(out_channels, out_channels, norm=norm, spatial_dims=spatial_dims),
        )


def bilinear_kernel(size: int) -> torch.Tensor:
    """A (size, size) bilinear interpolation kernel, the classic initialisation of FCN upsampling."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float32)
    filt = 1 - (og - center).abs() / factor
    return filt[:, None] * filt[None, :]


class Upsample(nn.Module):
    """Upsample by ``scale`` and map ``in_channels`` to ``out_channels``, in one of three ways.

    - ``"transpose"``: a learned transposed convolution (kernel = stride = scale).
    - ``"interp"``: nearest/bilinear interpolation followed by a 3x3 convolution.
    - ``"unpool"``: a 1x1 convolution then max-unpooling with the encoder's pooling indices
      (SegNet); ``forward`` then needs ``indices`` from a ``MaxPool(return_indices=True)``.

    Args:
        in_channels: Channels in.
        out_channels: Channels out.
        kind: One of :data:`UPSAMPLE_KINDS`.
        scale: Integer upsampling factor.
        spatial_dims: 2 or 3.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kind: str = "transpose",
        *,
        scale: int | tuple[int, ...] = 2,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if kind not in UPSAMPLE_KINDS:
            raise ValueError(f"Upsampling kind {kind!r} is not one of {', '.join(UPSAMPLE_KINDS)}.")
        self.kind, self.scale, self.spatial_dims = kind, scale, spatial_dims
        conv = conv_nd(spatial_dims)
        if kind == "transpose":
            tconv = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]
            self.op: nn.Module = tconv(in_channels, out_channels, scale, stride=scale)  # type: ignore[arg-type]
        elif kind == "interp":
            self.op = conv(in_channels, out_channels, 3, padding=1)
        else:  # SegNet-style: no learned upsampling; a 1x1 conv only where the channel count changes
            self.op = nn.Identity() if in_channels == out_channels else conv(in_channels, out_channels, 1)
            unpool = {2: nn.MaxUnpool2d, 3: nn.MaxUnpool3d}[spatial_dims]
            self.unpool = unpool(scale)  # type: ignore[arg-type]

    def forward(
        self,
        x: torch.Tensor,
        indices: torch.Tensor | None = None,
        output_size: torch.Size | None = None,
    ) -> torch.Tensor:
        if self.kind == "transpose":
            return self.op(x)
        if self.kind == "interp":
            mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
            size = output_size[-self.spatial_dims :] if output_size is not None else None
            x = F.interpolate(x, size=size, scale_factor=None if size else self.scale, mode=mode, align_corners=False)
            return self.op(x)
        if indices is None:
            raise ValueError("Upsample(kind='unpool') needs the pooling indices of the encoder.")
        return self.unpool(self.op(x), indices, output_size=output_size)


def pad_to_multiple(
    x: torch.Tensor, multiple: int | tuple[int, ...], spatial_dims: int = 2, min_size: int = 0
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad the trailing spatial axes of ``x`` at the end to a multiple of ``multiple`` (and at least ``min_size``).

    Returns:
        The padded tensor and the original spatial sizes, for :func:`crop_to`.
    """
    sizes = tuple(x.shape[-spatial_dims:])
    mults = (multiple,) * spatial_dims if isinstance(multiple, int) else tuple(multiple)
    pads: list[int] = []
    for s, m in zip(reversed(sizes), reversed(mults)):
        target = max(s, min_size)
        pads += [0, target - s + (-target) % m]
    if not any(pads):
        return x, sizes
    mode = "reflect" if all(p < s for p, s in zip(pads[1::2], reversed(sizes))) else "replicate"
    return F.pad(x, pads, mode=mode), sizes


def crop_to(x: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """Crop the trailing spatial axes of ``x`` back to ``sizes``."""
    idx = (Ellipsis,) + tuple(slice(0, s) for s in sizes)
    return x[idx]


def bilinear_transpose(channels: int, scale: int) -> nn.ConvTranspose2d:
    """A channel-wise transposed convolution upsampling by ``scale``, initialised to bilinear interpolation
    (kernel ``2*scale``, as FCN does); it stays learnable."""
    k = 2 * scale
    up = nn.ConvTranspose2d(channels, channels, k, stride=scale, padding=scale // 2, bias=False)
    with torch.no_grad():
        up.weight.zero_()
        kern = bilinear_kernel(k)
        for c in range(channels):
            up.weight[c, c] = kern
    return up


class VGGEncoder(nn.Module):
    """A VGG-style encoder: stages of 3x3 conv-norm-act followed by 2x2 max pooling.

    ``forward`` returns ``(features, indices, sizes)``: the pooled output of every stage
    (strides 2, 4, ..., 2**n), the pooling indices (for max-unpooling) and the pre-pool sizes.

    Args:
        in_channels: Image channels.
        widths: Channels of each stage (VGG16 is 64, 128, 256, 512, 512; the default is a quarter,
            which trains from scratch on a CPU).
        convs: Convolutions per stage (VGG16: 2, 2, 3, 3, 3).
    """

    def __init__(
        self,
        in_channels: int,
        widths: tuple[int, ...] = (16, 32, 64, 128, 128),
        convs: tuple[int, ...] = (2, 2, 3, 3, 3),
    ) -> None:
        super().__init__()
        self.widths = widths
        stages, c = [], in_channels
        for w, n in zip(widths, convs):
            layers = [ConvNormAct(c if i == 0 else w, w) for i in range(n)]
            stages.append(nn.Sequential(*layers))
            c = w
        self.stages = nn.ModuleList(stages)
        self.pool = nn.MaxPool2d(2, return_indices=True)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Size]]:
        feats, idxs, sizes = [], [], []
        for stage in self.stages:
            x = stage(x)
            sizes.append(x.shape)
            x, idx = self.pool(x)
            feats.append(x)
            idxs.append(idx)
        return feats, idxs, sizes


class AsymmetricConv(nn.Sequential):
    """An ``n x 1`` then ``1 x n`` convolution pair (ENet): an ``n x n`` receptive field at ``2n`` weights per channel pair."""

    def __init__(self, in_channels: int, out_channels: int, n: int = 5) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, (n, 1), padding=(n // 2, 0), bias=False),
            nn.Conv2d(out_channels, out_channels, (1, n), padding=(0, n // 2), bias=False),
        )


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module: average-pool to ``bins`` x ``bins`` grids, reduce channels,
    upsample back and concatenate with the input (output: ``in_channels * 2`` channels)."""

    def __init__(self, in_channels: int, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        red = in_channels // len(bins)
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_channels, red, 1, bias=False),
                nn.BatchNorm2d(red),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )
        self.out_channels = in_channels + red * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        outs = [x]
        for branch in self.branches:
            y = branch(x)
            outs.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
        return torch.cat(outs, 1)


class PadTo(nn.Module):
    """Wrap a network that needs sizes divisible by ``multiple``: pad (reflect) and crop back, so any size works."""

    def __init__(self, net: nn.Module, multiple: int, min_size: int = 0) -> None:
        super().__init__()
        self.net, self.multiple, self.min_size = net, multiple, min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, sizes = pad_to_multiple(x, self.multiple, min_size=self.min_size)
        return crop_to(self.net(x), sizes)
