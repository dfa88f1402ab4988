"""The segmentation-models-pytorch decoders, with any of its encoders by name (``encoder_name``).

Registered: DeepLabV3, DeepLabV3+, UNet++, FPN, LinkNet, MAnet, PAN, UPerNet and Segformer.
ResNet-18 is the default encoder here (smp's own default is ResNet-34): it trains in reasonable
time on a CPU. Inputs of any size are padded to a multiple of 32 and cropped back.
"""

from __future__ import annotations

from torch import nn

from ._weights import build_with_fallback, load_local
from .blocks import PadTo
from .registry import register

_SMP = {
    # registry name: (smp class name, description)
    "deeplabv3": (
        "DeepLabV3",
        "DeepLabV3 (smp): atrous spatial pyramid pooling on a dilated encoder - context at many scales.",
    ),
    "deeplabv3plus": (
        "DeepLabV3Plus",
        "DeepLabV3+ (smp): DeepLabV3 plus a decoder for sharper boundaries - scenes, varied object sizes.",
    ),
    "unetplusplus": ("UnetPlusPlus", "UNet++ (smp): nested dense skip pathways - a heavier UNet for fine structures."),
    "fpn": ("FPN", "FPN (smp): feature pyramid decoder - objects at many sizes."),
    "linknet": ("Linknet", "LinkNet (smp): light residual decoder adding skips - fast."),
    "manet": ("MAnet", "MA-Net (smp): attention-based multi-scale decoder."),
    "pan": ("PAN", "PAN (smp): pyramid attention network."),
    "upernet": ("UPerNet", "UPerNet (smp): pyramid pooling + FPN fusion - scene parsing."),
    "segformer": ("Segformer", "Segformer (smp decoder): light all-MLP decoder."),
}

# PAN's feature pyramid attention pools its stride-16 map three more times: it needs 128 px at least.
_MIN_SIZE = {"pan": 128}


def _make(name: str, cls_name: str):
    def build(
        *, num_classes: int, in_channels: int = 1, encoder_name: str = "resnet18", weights: str | None = None
    ) -> nn.Module:
        import segmentation_models_pytorch as smp

        cls = getattr(smp, cls_name)
        net = build_with_fallback(
            lambda ew: cls(encoder_name=encoder_name, encoder_weights=ew, in_channels=in_channels, classes=num_classes),
            weights,
            name,
        )
        return load_local(PadTo(net, 32, _MIN_SIZE.get(name, 0)), weights)

    build.__name__ = f"build_{name}"
    return build


#: smp networks measured slower channels-last on the CPU (:mod:`napari_segsuite.layout`): SegFormer, 0.77x.
_DEFAULT_LAYOUT = {"segformer"}

for _name, (_cls, _desc) in _SMP.items():
    register(_name, kind="semantic", description=_desc, channels_last=_name not in _DEFAULT_LAYOUT)(_make(_name, _cls))
