"""napari-segsuite: deep-learning segmentation you can train from napari's Labels layers.

The compute code (``models``, ``tasks``, ``inference``, ``training``, ``io``) never imports Qt or
napari; ``widgets`` and ``cli`` are thin front ends over it.
"""

__version__ = "0.1.0"
