"""napari-segsuite: deep-learning segmentation you can train from napari's Labels layers.

The compute code (``models``, ``tasks``, ``inference``, ``training``, ``io``) never imports Qt or
napari; ``widgets`` and ``cli`` are thin front ends over it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-segsuite")  # set from the git tag at build time (setuptools_scm)
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.1.0"
