"""Interactive annotation, Qt-free: what a click or a box does to a label array, given the image and
(optionally) a model's cached maps. The Annotate dock, the tests and ``bench/annotate.py`` call it."""

from .click import AnnotationSession, Edit
from .maps import PlaneMaps, compute_maps

__all__ = ["AnnotationSession", "Edit", "PlaneMaps", "compute_maps"]
