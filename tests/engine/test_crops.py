"""Crops centred on classes: a rare class is seen in training as often as a common one."""

import numpy as np

from napari_segsuite.augment import CLASS_CROP_P, ClassIndex, crop_batch
from napari_segsuite.samples import Sample
from napari_segsuite.tasks import IGNORE, Targets


def _samples(nd: int) -> list[Sample]:
    """Two images of a common class 0 with a few pixels of class 2 in one and of class 1 in the other."""
    shape = (16, 96, 96) if nd == 3 else (192, 192)
    out = []
    for c, at in ((1, (5,) * nd), (2, tuple(n - 7 for n in shape))):
        y = np.zeros(shape, np.int64)
        y[tuple(slice(a, a + 3) for a in at)] = c
        y[(0,) * nd] = IGNORE
        out.append(Sample(np.random.default_rng(c).random((1, *shape), dtype=np.float32), Targets(y, y, None)))
    return out


def _share_with(samples: list[Sample], patch: tuple[int, ...], index: ClassIndex | None) -> dict[int, float]:
    rng = np.random.default_rng(0)
    seen = {1: 0, 2: 0}
    n = 0
    for _ in range(40):
        x, y = crop_batch(samples, patch, 4, rng, augment=True, index=index)
        assert x.shape == (4, 1, *patch) and y.shape == (4, *patch)
        for c in seen:
            seen[c] += int(((y == c).flatten(1).any(1)).sum())
        n += 4
    return {c: k / n for c, k in seen.items()}


def test_class_crops_find_rare_classes_in_2d_and_3d():
    for nd, patch in ((2, (48, 48)), (3, (8, 32, 32))):
        samples = _samples(nd)
        index = ClassIndex.of(samples, np.random.default_rng(0))
        assert index.classes == [0, 1, 2]  # the unlabelled pixel is no class
        plain = _share_with(samples, patch, None)
        centred = _share_with(samples, patch, index)
        for c in (1, 2):
            assert plain[c] < 0.15
            # a third of the crops go to a class drawn from three: each rare class in about a ninth more
            assert centred[c] > plain[c] + CLASS_CROP_P / 3 * 0.6
