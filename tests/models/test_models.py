from types import SimpleNamespace

import pytest
import torch

from napari_segsuite.models import available, build, get_spec, register
from napari_segsuite.models.base import ObjectModel
from napari_segsuite.models.blocks import UPSAMPLE_KINDS, Upsample
from napari_segsuite.models.unet import UNet
from napari_segsuite.tasks import get_task


def test_unknown_name_lists_registered_models():
    with pytest.raises(KeyError, match="unet"):
        get_spec("no-such-model")


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register("unet", kind="semantic", description="again")(lambda **kw: None)


@pytest.mark.parametrize("spec", available(), ids=lambda s: s.name)
@pytest.mark.parametrize("shape", [(64, 64), (50, 77)])
def test_forward_backward_any_size(spec, shape):
    if spec.divisible_by > 1 and any(s % spec.divisible_by for s in shape):
        pytest.skip(f"{spec.name} needs multiples of {spec.divisible_by}")
    model = build(spec.name, num_classes=3, in_channels=1)
    if spec.spatial_dims == 3:
        shape = (5, *shape)
    x = torch.randn(2, 1, *shape, requires_grad=True)
    if isinstance(model, ObjectModel):  # objects out: the loss is what backpropagates
        y = torch.zeros(2, 2, *shape, dtype=torch.long)
        y[:, :, 8:24, 8:24] = 1
        y[1, 1, 8:24, 8:24] = 2  # the second image's object is of class 2
        model.train()
        out = model.loss(x, y)
        assert out.ndim == 0 and torch.isfinite(out)
    else:
        out = model(x)
        card = SimpleNamespace(num_classes=3, build=dict(spec.defaults), architecture=spec.name)
        maps = get_task(spec.kind).output_channels(card)  # e.g. panoptic: + centre, offsets; instance: + distance
        assert out.shape == (2, maps, *shape)
    out.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("kind", UPSAMPLE_KINDS)
@pytest.mark.parametrize("dims", [2, 3])
def test_upsample_kinds_shape_and_gradient(kind, dims):
    pool = torch.nn.MaxPool2d(2, return_indices=True) if dims == 2 else torch.nn.MaxPool3d(2, return_indices=True)
    x = torch.randn(1, 4, *([12] * dims), requires_grad=True)  # the encoder feature (skip)
    pooled, idx = pool(x)
    deep = torch.cat([pooled, pooled * 2], dim=1)  # 8 deeper channels at half resolution
    up = Upsample(8, 4, kind, spatial_dims=dims)
    y = up(deep, idx if kind == "unpool" else None, output_size=x.shape)
    assert y.shape == (1, 4, *([12] * dims))
    y.square().sum().backward()
    assert x.grad.abs().sum() > 0
    if kind == "unpool":  # unpooling puts values only where the maxima were
        nonzero = (y.detach() != 0).float().mean()  # at most one of each 2x2 (2x2x2) block per channel
        assert nonzero <= 0.25 + 1e-6


@pytest.mark.parametrize("kind", UPSAMPLE_KINDS)
def test_unet_upsample_choice(kind):
    model = UNet(num_classes=2, upsample=kind, depth=3)
    out = model(torch.randn(1, 1, 37, 45))
    assert out.shape == (1, 2, 37, 45)


def test_unet_3d():
    model = UNet(num_classes=2, spatial_dims=3, depth=2, base_filters=4)
    assert model(torch.randn(1, 1, 9, 20, 20)).shape == (1, 2, 9, 20, 20)


def test_unet_3d_anisotropic_pooling_keeps_z_longer():
    iso = UNet(num_classes=2, spatial_dims=3, depth=3, base_filters=4)
    aniso = UNet(num_classes=2, spatial_dims=3, depth=3, base_filters=4, xy_only_levels=2)
    assert iso.multiple == (8, 8, 8) and aniso.multiple == (2, 8, 8)
    x = torch.randn(1, 1, 4, 24, 24)
    assert aniso(x).shape == (1, 2, 4, 24, 24)
    with pytest.raises(ValueError, match="3D"):
        UNet(num_classes=2, xy_only_levels=1)


def test_imagenet_weights_offline_fall_back_with_one_warning(caplog, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level("WARNING"):
        model = build("deeplabv3plus", num_classes=2, weights="imagenet")
    warnings = [r for r in caplog.records if "ImageNet" in r.getMessage()]
    assert len(warnings) == 1 and "random weights" in warnings[0].getMessage()
    assert model.eval()(torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)


def test_local_weights_file_initialises_the_model(tmp_path):
    from safetensors.torch import save_file

    src = build("enet", num_classes=2)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    loaded = build("enet", num_classes=2, weights=str(tmp_path / "w.safetensors"))
    for (k, a), b in zip(src.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="safetensors"):
        build("enet", num_classes=2, weights=str(tmp_path / "w.pt"))


def test_bilinear_transpose_starts_as_bilinear_interpolation():
    from napari_segsuite.models.blocks import bilinear_transpose

    up = bilinear_transpose(2, 4)
    x = torch.rand(1, 2, 6, 6)
    y = up(x)
    ref = torch.nn.functional.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
    assert y.shape == ref.shape == (1, 2, 24, 24)
    # away from the border (where the transposed conv sees zero padding) it is bilinear interpolation
    torch.testing.assert_close(y[..., 4:-4, 4:-4], ref[..., 4:-4, 4:-4], atol=1e-5, rtol=0)
    assert all(p.requires_grad for p in up.parameters())
