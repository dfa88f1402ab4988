"""Thin napari dock widgets over the Qt-free engine. They check input, run the engine in napari
thread workers, and turn its progress into a bar, a status line and a Cancel button."""

from ._common import guard_triton

# Before any engine import: torchvision's detection ops import torch._dynamo, which probes triton; in a
# process where napari's OpenGL already loaded Mesa's LLVM that probe would crash the viewer.
guard_triton()
