"""How networks run: channels-last (NHWC) where it was measured faster, bfloat16 where the CPU has it in hardware.

PyTorch's CPU convolutions (oneDNN) and CUDA's tensor cores run most 2D networks faster on
channels-last tensors. A network whose weights are channels-last makes its activations channels-last
too (a one-channel input is the same bytes either way; PyTorch converts others at the first
convolution), so the layout is set once, on the weights, when a model is built or loaded
(:func:`~.model_files.new_model`, :func:`~.model_files.load_model`), and training, inference,
blockwise runs and live training all use it. Saved weights are written contiguous, as before.

Forward pass, one thread of this project's 2-core CPU, batch 1 of 256 x 256, channels-last over the
default layout: ``unet`` 1.32x, ``unet-instance`` 1.36x, ``fcn8s``/``16s``/``32s`` 1.39-1.42x,
``segnet`` 1.28x, ``deeplabv3`` 1.23x, ``deeplabv3plus`` 1.19x, ``panoptic-deeplab`` 1.22x, smp's
``unetplusplus`` 1.21x, ``upernet`` 1.23x, ``linknet`` 1.26x, ``manet`` 1.19x, ``pan`` 1.13x, ``fpn``
1.10x; slower: ``enet`` 0.82x, ``pspnet`` 0.94x, ``segformer`` 0.77x, and the 3D UNets 0.95-1.01x
(channels-last-3D): those keep the default layout (:attr:`~.models.registry.ModelSpec.channels_last`).

**bfloat16**: CPUs with Intel AMX multiply bfloat16 matrices in hardware; there, autocast to bfloat16
(:func:`autocast_dtype`) doubles the speed again: the default UNet's forward pass 2.1x and its training
step 2.0x, the 3D UNet's training step 1.8x (one thread, on top of channels-last). Per step it learns
as in float32 (ISBI, 240 steps: held-out mean IoU 0.781 in float32, 0.783 in bfloat16).
``bench/precision.py`` prints the table for any model.

The 3D UNets run channels-last-3D at inference only, in bfloat16 (:func:`inference_module`).

``SEGSUITE_CHANNELS_LAST=0`` keeps every network in the default layout; ``SEGSUITE_CPU_BF16=0`` keeps
the CPU's arithmetic float32.
"""

from __future__ import annotations

import copy
import itertools
import os
import threading
import weakref
from typing import Any

import torch
from torch import nn

from .models.registry import ModelSpec

#: Environment variable: ``0`` turns channels-last off for every network.
ENV = "SEGSUITE_CHANNELS_LAST"


def channels_last(spec: ModelSpec) -> bool:
    """Whether networks of ``spec`` run channels-last."""
    return spec.channels_last and spec.spatial_dims == 2 and os.environ.get(ENV, "1") != "0"


def apply_layout(module: nn.Module, spec: ModelSpec) -> nn.Module:
    """``module`` (changed in place) with its 4D weights channels-last where ``spec`` runs that way."""
    if channels_last(spec):
        module.to(memory_format=torch.channels_last)
    return module


#: Environment variable: ``0`` keeps the CPU's arithmetic in float32 (no bfloat16 autocast).
BF16_ENV = "SEGSUITE_CPU_BF16"


def cpu_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix arithmetic in hardware (Intel AMX), where autocast to
    bfloat16 pays; elsewhere oneDNN emulates it, slower than float32."""
    if os.environ.get(BF16_ENV, "1") == "0":
        return False
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # torch builds without the probe
        return False


def autocast_dtype(device: torch.device, amp: bool = True) -> torch.dtype | None:
    """The reduced precision networks run in on ``device`` under mixed precision (``amp``), or ``None``
    for float32: bfloat16 (float16 on CUDA devices without it) on CUDA, bfloat16 on CPUs with AMX
    (:func:`cpu_bf16`). Weights, losses, optimiser state and the maps a network returns stay float32."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_bf16():
        return torch.bfloat16
    return None


#: Environment variable: ``0`` runs inference on the network as it is (no batch norm folded).
FOLD_ENV = "SEGSUITE_FOLD_BN"

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_folded: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], nn.Module]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def fold_batchnorm(module: nn.Module) -> int:
    """Fold, in place, each batch norm that directly follows a convolution in a ``Sequential`` into
    that convolution (its running statistics and affine weights become the convolution's weight and
    bias; the norm becomes ``Identity``). Only for a network in eval mode. Returns how many were folded."""
    n = 0
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, norm = seq._modules[a], seq._modules[b]
            if (
                isinstance(conv, _CONV)
                and isinstance(norm, _NORM)
                and norm.running_mean is not None
                and norm.running_var is not None
                and conv.out_channels == norm.num_features
            ):
                last = conv.weight.dim() == 4 and conv.weight.is_contiguous(memory_format=torch.channels_last)
                fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, norm)
                if last:
                    fused.to(memory_format=torch.channels_last)
                seq._modules[a], seq._modules[b] = fused, nn.Identity()
                n += 1
    return n


def _cl3d_for_inference(module: nn.Module) -> bool:
    """Whether the inference copy of a 3D network runs channels-last-3D: on CPUs that run it in bfloat16
    (:func:`cpu_bf16`), where its forward pass measured 1.6-2.0x (``unet3d`` 1.98x / 1.91x,
    ``unet3d-instance`` 1.62x / 1.82x on 1 / 2 threads, batch norms folded, 32 x 128 x 128; the input
    may stay as it is). Training keeps the default layout (``unet3d-instance``'s training step was
    0.67x), as does float32 (0.95-1.01x)."""
    if os.environ.get(ENV, "1") == "0" or not cpu_bf16():
        return False
    on_cpu = all(p.device.type == "cpu" for p in module.parameters())
    return on_cpu and any(isinstance(m, nn.Conv3d) for m in module.modules())


def _stamp(module: nn.Module) -> tuple[Any, ...]:
    """What changes when a network's weights or statistics change (in place or replaced)."""
    return tuple((t.data_ptr(), t._version) for t in itertools.chain(module.parameters(), module.buffers()))


def inference_module(module: nn.Module) -> nn.Module:
    """The network to run for inference: for one in eval mode, a copy with its batch norms folded
    into the convolutions before them (:func:`fold_batchnorm`) and, for 3D networks, channels-last-3D
    where :func:`_cl3d_for_inference` says so, made once and made again only when the network's weights
    change (training between two predictions, as live training does); the network itself where it is
    training, where the copy would change nothing, or ``SEGSUITE_FOLD_BN=0``.

    Batch norm and the ReLU after it are memory-bound: in bfloat16 on this CPU they took as long as the
    convolutions (a UNet over an 8192^2 image: conv 4.2 s, batch norm 2.2 s, ReLU 2.3 s); folded, the
    batch norm's pass is gone."""
    if module.training or os.environ.get(FOLD_ENV, "1") == "0":
        return module
    stamp = _stamp(module)
    with _lock:
        hit = _folded.get(module)
        if hit is not None and hit[0] == stamp:
            return hit[1]
    with torch.no_grad():
        copy_ = copy.deepcopy(module)
        changed = fold_batchnorm(copy_) > 0
        if _cl3d_for_inference(copy_):
            copy_.to(memory_format=torch.channels_last_3d)
            changed = True
        folded = copy_ if changed else module
    with _lock:
        _folded[module] = (stamp, folded)
    return folded
