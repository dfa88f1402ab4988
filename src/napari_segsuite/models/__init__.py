"""Model architectures and the registry that names them.

Importing this package registers every built-in architecture.
"""

from . import (  # noqa: F401  (each registers its models)
    deepmask,
    enet,
    fcn,
    maskrcnn,
    panoptic_deeplab,
    pspnet,
    segnet,
    smp_models,
    solo,
    unet,
)
from .registry import ModelSpec, available, build, get_spec, register

__all__ = ["ModelSpec", "available", "build", "get_spec", "register"]
