"""The classic UNet (Ronneberger et al., 2015) with batch norm, 2D or 3D, any input size."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._weights import load_local
from .blocks import DoubleConv, Upsample, conv_nd, crop_to, maxpool_nd, pad_to_multiple
from .registry import register


class UNet(nn.Module):
    """Encoder-decoder with skip connections by concatenation.

    Args:
        in_channels: Image channels (1 grayscale, 3 RGB).
        num_classes: Output channels (class logits).
        base_filters: Filters of the first level; each level down doubles them.
        depth: Number of 2x poolings (levels below the first).
        upsample: ``"transpose"`` (the paper's up-convolution), ``"interp"`` or ``"unpool"``.
        spatial_dims: 2 for ``(N, C, H, W)`` input, 3 for ``(N, C, D, H, W)``.
        norm: Batch norm after each convolution.
        xy_only_levels: 3D only: how many of the first poolings leave Z alone (anisotropic pooling
            for thick slices: with Z spacing 4x the XY spacing, use 2).

    Input of any size is padded to a multiple of ``2**depth`` and the output cropped back, so
    ``forward`` returns logits of shape ``(N, num_classes, *input_spatial)``.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 2,
        base_filters: int = 16,
        depth: int = 4,
        upsample: str = "transpose",
        spatial_dims: int = 2,
        norm: bool = True,
        xy_only_levels: int = 0,
    ) -> None:
        super().__init__()
        self.depth, self.spatial_dims = depth, spatial_dims
        if spatial_dims == 2 and xy_only_levels:
            raise ValueError("xy_only_levels applies to 3D UNets only.")
        kernels = [(1, 2, 2) if spatial_dims == 3 and i < xy_only_levels else (2,) * spatial_dims for i in range(depth)]
        self.multiple = tuple(2 ** sum(k[a] == 2 for k in kernels) for a in range(spatial_dims))
        chans = [base_filters * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList(
            [DoubleConv(in_channels, chans[0], norm=norm, spatial_dims=spatial_dims)]
            + [DoubleConv(chans[i], chans[i + 1], norm=norm, spatial_dims=spatial_dims) for i in range(depth)]
        )
        self.pools = nn.ModuleList([maxpool_nd(spatial_dims)(k, return_indices=upsample == "unpool") for k in kernels])
        self.ups = nn.ModuleList(
            [
                Upsample(chans[i + 1], chans[i], upsample, scale=kernels[i], spatial_dims=spatial_dims)
                for i in reversed(range(depth))
            ]
        )
        self.decoders = nn.ModuleList(
            [DoubleConv(2 * chans[i], chans[i], norm=norm, spatial_dims=spatial_dims) for i in reversed(range(depth))]
        )
        self.head = conv_nd(spatial_dims)(chans[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, sizes = pad_to_multiple(x, self.multiple, self.spatial_dims)
        skips, indices = [], []
        x = self.encoders[0](x)
        for enc, pool in zip(self.encoders[1:], self.pools):
            skips.append(x)
            pooled = pool(x)
            if isinstance(pooled, tuple):
                pooled, idx = pooled
                indices.append(idx)
            x = enc(pooled)
        for up, dec in zip(self.ups, self.decoders):
            skip = skips.pop()
            x = up(x, indices.pop() if indices else None, output_size=skip.shape)
            x = dec(torch.cat([skip, x], dim=1))
        return crop_to(self.head(x), sizes)


@register(
    "unet",
    kind="semantic",
    channels_last=True,
    description="Classic UNet (16 base filters, depth 4, batch norm): the default for small data and microscopy.",
)
def build_unet(
    *,
    num_classes: int,
    in_channels: int = 1,
    base_filters: int = 16,
    depth: int = 4,
    upsample: str = "transpose",
    weights: str | None = None,
) -> nn.Module:
    """Build a 2D :class:`UNet`. ``weights`` is a local safetensors file or ``None`` (random init)."""
    model = UNet(
        in_channels=in_channels, num_classes=num_classes, base_filters=base_filters, depth=depth, upsample=upsample
    )
    return load_local(model, weights)


@register(
    "unet3d",
    kind="semantic",
    spatial_dims=3,
    description="3D UNet for volumes (native 3D convolutions; xy_only_levels for thick slices): when context across Z matters.",
)
def build_unet3d(
    *,
    num_classes: int,
    in_channels: int = 1,
    base_filters: int = 16,
    depth: int = 4,
    upsample: str = "transpose",
    xy_only_levels: int = 0,
    weights: str | None = None,
) -> nn.Module:
    """Build a 3D :class:`UNet` taking ``(N, C, D, H, W)``."""
    model = UNet(
        in_channels=in_channels,
        num_classes=num_classes,
        base_filters=base_filters,
        depth=depth,
        upsample=upsample,
        spatial_dims=3,
        xy_only_levels=xy_only_levels,
    )
    return load_local(model, weights)


@register(
    "unet-instance",
    kind="instance",
    channels_last=True,
    description="UNet predicting background / interior / boundary and each object's distance map, objects "
    "split by seeded watershed: the small-data default for cells and nuclei.",
    distance=True,
)
def build_unet_instance(
    *,
    num_classes: int = 3,
    in_channels: int = 1,
    base_filters: int = 16,
    depth: int = 4,
    upsample: str = "transpose",
    distance: bool = False,
    weights: str | None = None,
) -> nn.Module:
    """A 2D :class:`UNet` with the 3 output classes of :mod:`napari_segsuite.tasks.instance` and, with
    ``distance`` (new models), the normalised distance map of :mod:`napari_segsuite.tasks.distance`
    (``False`` is what models saved before it have)."""
    return _instance_unet(
        "unet-instance", num_classes, distance, weights, in_channels=in_channels, base_filters=base_filters,
        depth=depth, upsample=upsample,
    )  # fmt: skip


def _instance_unet(name: str, num_classes: int, distance: bool, weights: str | None, **unet: Any) -> nn.Module:
    """A :class:`UNet` with the three classes of :mod:`napari_segsuite.tasks.instance` (and the distance map)."""
    if num_classes != 3:
        raise ValueError(f"{name} predicts 3 classes (background, interior, boundary), not {num_classes}.")
    return load_local(UNet(num_classes=3 + int(distance), **unet), weights)


@register(
    "unet3d-instance",
    kind="instance",
    spatial_dims=3,
    training={"patch_size": 64},
    description="3D UNet predicting background / interior / boundary and each object's distance map, objects "
    "split by 3D seeded watershed: nuclei in volumes.",
    distance=True,
)
def build_unet3d_instance(
    *,
    num_classes: int = 3,
    in_channels: int = 1,
    base_filters: int = 8,
    depth: int = 3,
    upsample: str = "transpose",
    xy_only_levels: int = 0,
    distance: bool = False,
    weights: str | None = None,
) -> nn.Module:
    """A 3D :class:`UNet` with the 3 output classes of :mod:`napari_segsuite.tasks.instance` (and the
    distance map with ``distance``), run on whole volumes."""
    return _instance_unet(
        "unet3d-instance", num_classes, distance, weights, in_channels=in_channels, base_filters=base_filters,
        depth=depth, upsample=upsample, spatial_dims=3, xy_only_levels=xy_only_levels,
    )  # fmt: skip
