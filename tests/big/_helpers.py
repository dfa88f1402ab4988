"""Shared by the big-image tests: a tiny deterministic instance 'model' and disk images."""

import numpy as np
import torch

from napari_segsuite.model_files import new_model


class Threshold(torch.nn.Module):
    """Background / interior / boundary logits from a smoothed image: bright disks become objects."""

    def forward(self, x):
        s = torch.nn.functional.avg_pool2d(x[:, :1], 3, 1, 1)
        return torch.cat([8 * (0.5 - s), 8 * (s - 0.5), torch.full_like(s, -2.0)], 1)


def instance_model():
    m = new_model("unet-instance", label_values=[0, 1, 2], depth=2, base_filters=4, distance=False)
    m.module = Threshold().eval()  # three maps: no distance map
    return m


def semantic_model():
    torch.manual_seed(0)
    m = new_model("unet", label_values=[0, 1, 2], depth=2, base_filters=4)
    with torch.no_grad():
        for p in m.module.parameters():
            p.mul_(3)  # a random network whose argmax is not all one class
    return m


def disks(shape, centres, radius=9):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape, np.uint8)
    for cy, cx in centres:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 200
    return img


def random_disks(shape, n, seed=0, radius=9):
    rng = np.random.default_rng(seed)
    centres = []
    while len(centres) < n:
        c = rng.integers(radius + 1, np.array(shape) - radius - 1)
        if all(np.hypot(*(c - d)) > 2 * radius + 3 for d in centres):
            centres.append(c)
    return disks(shape, centres, radius), centres


def same_objects(a, b, iou=0.5):
    """Whether label images ``a`` and ``b`` hold the same objects (one-to-one at IoU >= ``iou``)."""
    ids_a, ids_b = np.unique(a[a > 0]), np.unique(b[b > 0])
    if len(ids_a) != len(ids_b):
        return False
    for i in ids_a:
        m = a == i
        j = np.bincount(b[m]).argmax() if b[m].any() else 0
        if j == 0 or (m & (b == j)).sum() / (m | (b == j)).sum() < iou:
            return False
    return True
