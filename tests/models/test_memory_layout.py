"""Networks run channels-last where that was measured faster (napari_segsuite.layout)."""

import numpy as np
import pytest
import torch

from napari_segsuite.inference import predict, predict_maps
from napari_segsuite.layout import ENV
from napari_segsuite.model_files import load_model, new_model, save_model
from napari_segsuite.progress import drive


def _conv_weights(module: torch.nn.Module, kind: type = torch.nn.Conv2d) -> list[torch.Tensor]:
    """Weights of ``kind`` convolutions whose layout shows (more than one input channel, kernels over 1)."""
    return [
        m.weight for m in module.modules() if isinstance(m, kind) and m.weight.shape[-1] > 1 and m.weight.shape[1] > 1
    ]


def _channels_last(module: torch.nn.Module) -> bool:
    return all(
        w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in _conv_weights(module)
    )


def test_unet_is_channels_last_when_built_and_loaded_and_saves_plain_tensors(tmp_path):
    model = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    assert _conv_weights(model.module) and _channels_last(model.module)
    x = np.random.default_rng(0).random((1, 70, 90)).astype(np.float32)
    model.module.eval()
    maps = drive(predict_maps(model, x))
    loaded = load_model(save_model(model, tmp_path / "m"))
    assert _channels_last(loaded.module)
    np.testing.assert_array_equal(drive(predict_maps(loaded, x)), maps)
    from safetensors.torch import load_file

    assert all(t.is_contiguous() for t in load_file(str(tmp_path / "m" / "model.safetensors")).values())


@pytest.mark.parametrize("name", ["enet", "unet3d"])
def test_networks_measured_slower_keep_the_default_layout(name):
    model = new_model(name, label_values=[0, 1])
    weights = [p for p in model.module.parameters() if p.dim() >= 4 and p.shape[-1] > 1]
    assert weights and all(w.is_contiguous() for w in weights)


def test_the_environment_turns_it_off(monkeypatch):
    monkeypatch.setenv(ENV, "0")
    model = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    assert all(w.is_contiguous() for w in _conv_weights(model.module))


def test_channels_last_gives_the_same_maps_as_the_default_layout(monkeypatch):
    torch.manual_seed(0)
    fast = new_model("unet-instance", label_values=[0, 1, 2], depth=2, base_filters=4)
    monkeypatch.setenv(ENV, "0")
    plain = new_model("unet-instance", label_values=[0, 1, 2], depth=2, base_filters=4)
    plain.module.load_state_dict(fast.module.state_dict())
    x = torch.randn(2, 1, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(fast.module.eval()(x), plain.module.eval()(x), atol=1e-5, rtol=1e-4)


def test_cpu_autocasts_to_bfloat16_only_where_the_hardware_runs_it(monkeypatch):
    from napari_segsuite import layout

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert layout.autocast_dtype(cpu) == torch.bfloat16
    assert layout.autocast_dtype(cpu, amp=False) is None
    monkeypatch.setenv(layout.BF16_ENV, "0")
    assert layout.autocast_dtype(cpu) is None
    monkeypatch.delenv(layout.BF16_ENV)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)  # emulated bfloat16 is slower
    assert layout.autocast_dtype(cpu) is None


def test_inference_runs_in_the_autocast_precision(monkeypatch):
    from napari_segsuite import tiling

    model = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    seen = []
    model.module.head.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    monkeypatch.setattr(tiling, "autocast_dtype", lambda device, amp=True: torch.bfloat16 if amp else None)
    labels = drive(predict(model, image, device="cpu"))
    assert seen[-1] == torch.bfloat16 and labels.shape == image.shape
    drive(predict(model, image, device="cpu", amp=False))
    assert seen[-1] == torch.float32


def test_inference_folds_batch_norm_into_the_convolutions_and_refolds_after_training():
    from napari_segsuite.layout import inference_module

    torch.manual_seed(0)
    model = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    module = model.module
    module.train()
    for _ in range(3):  # running statistics away from their start
        module(torch.randn(2, 1, 32, 32))
    assert inference_module(module) is module  # training: as it is
    module.eval()
    folded = inference_module(module)
    assert folded is not module and inference_module(module) is folded  # made once
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())  # the network itself unchanged
    assert _channels_last(folded)
    x = torch.randn(2, 1, 48, 48)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), module(x), atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # a training step changes the weights in place: the fold is made again
        next(module.parameters()).add_(0.5)
    again = inference_module(module)
    assert again is not folded
    with torch.inference_mode():
        torch.testing.assert_close(again(x), module(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bf16", [True, False])
def test_3d_inference_copy_is_channels_last_3d_only_in_bfloat16(monkeypatch, bf16):
    """The 3D UNets' inference copy runs channels-last-3D where the CPU runs bfloat16 (measured 1.6-2.0x
    there; float32 gained nothing), with the same maps; the network itself and training stay NCDHW."""
    from napari_segsuite import layout

    monkeypatch.setattr(layout, "cpu_bf16", lambda: bf16)
    monkeypatch.delenv(ENV, raising=False)
    torch.manual_seed(0)
    module = new_model("unet3d-instance", label_values=[0, 1, 2], depth=2, base_filters=4).module
    module.train()
    for _ in range(2):
        module(torch.randn(2, 1, 8, 32, 32))
    module.eval()
    copy_ = layout.inference_module(module)
    convs = _conv_weights(copy_, torch.nn.Conv3d)
    assert convs
    assert all(w.is_contiguous(memory_format=torch.channels_last_3d) and not w.is_contiguous() for w in convs) == bf16
    own = _conv_weights(module, torch.nn.Conv3d)
    assert all(w.is_contiguous() for w in own)  # the network itself (and so training) keeps its layout
    x = torch.randn(1, 1, 8, 40, 40)
    with torch.inference_mode():
        torch.testing.assert_close(copy_(x), module(x), atol=1e-4, rtol=1e-4)
