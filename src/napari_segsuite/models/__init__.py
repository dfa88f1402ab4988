"""Model architectures and the registry that names them.

Importing this package registers every built-in architecture.
"""

from . import unet  # noqa: F401  (registers "unet")
from .registry import ModelSpec, available, build, get_spec, register

__all__ = ["ModelSpec", "available", "build", "get_spec", "register"]
