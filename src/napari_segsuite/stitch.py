"""Object ids made global across blocks: offsets, seams merged by union-find, one final numbering.

Each block segments its *region* (its core plus a halo) and writes only its core. Its ids are shifted
by an offset so they are unique; an object cut by a block border then lies in two or more cores.
Where a block's halo covers a neighbour's core, the two segmentations overlap: a pair of ids (one
from the halo, one from the neighbour's core) that shares at least :data:`MIN_OVERLAP` of the smaller
of the two (counted inside the overlap) is the same object, and union-find joins them, across edges
and corners alike. :meth:`Stitcher.finish` numbers the joined objects 1..N in block order (so the ids do
not depend on the order blocks finished in) and rewrites the output block by block.

Works on any array that takes numpy slicing: a zarr array on disk or a numpy array.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

Box = tuple[slice, ...]
#: Share of the smaller of two pieces (inside the overlap of a halo and a core) that makes them one object.
MIN_OVERLAP = 0.5


class UnionFind:
    """Disjoint sets of ids (only ids ever joined are stored)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        root = a
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while a != root:  # path compression
            self.parent[a], a = root, self.parent.get(a, a)
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def intersect(a: Box, b: Box) -> Box | None:
    """The overlap of two boxes, or ``None``."""
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return out if all(s.start < s.stop for s in out) else None


def shift(box: Box, origin: Box) -> Box:
    """``box`` in the coordinates of an array whose corner is ``origin``'s start."""
    return tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(box, origin))


def matches(halo: np.ndarray, core: np.ndarray, min_overlap: float = MIN_OVERLAP) -> list[tuple[int, int]]:
    """Pairs ``(halo id, core id)`` seen over the same pixels that are one object: their common pixels
    are at least ``min_overlap`` of the smaller of the two pieces (two objects that merely touch share
    a few border pixels and stay apart)."""
    both = (halo > 0) & (core > 0)
    if not both.any():
        return []
    pairs, counts = np.unique(np.stack([halo[both], core[both]]).astype(np.int64), axis=1, return_counts=True)
    ha, hn = np.unique(halo[halo > 0], return_counts=True)
    ca, cn = np.unique(core[core > 0], return_counts=True)
    hsize, csize = dict(zip(ha.tolist(), hn.tolist())), dict(zip(ca.tolist(), cn.tolist()))
    return [
        (int(a), int(b))
        for (a, b), c in zip(pairs.T.tolist(), counts.tolist())
        if c >= min_overlap * min(hsize[a], csize[b])
    ]


class Stitcher:
    """Writes blocks' object ids into ``out`` and makes them global (see the module text).

    Args:
        out: The output array (zarr or numpy), int32, of the image's spatial shape.
        cores: Each block's core box, by block index.
    """

    def __init__(self, out: Any, cores: dict[tuple[int, ...], Box]) -> None:
        self.out = out
        self.cores = cores
        self.uf = UnionFind()
        self.next_id = 1
        self.offsets: dict[tuple[int, ...], int] = {}
        self.present: dict[tuple[int, ...], np.ndarray] = {}  # local ids written in each core
        self.pending: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[Box, np.ndarray]] = {}
        self.merges = 0

    def _neighbours(self, index: tuple[int, ...]) -> list[tuple[int, ...]]:
        out = []
        for d in itertools.product((-1, 0, 1), repeat=len(index)):
            n = tuple(i + k for i, k in zip(index, d))
            if any(d) and n in self.cores:
                out.append(n)
        return out

    def add(self, index: tuple[int, ...], region: Box, ids: np.ndarray) -> None:
        """Take block ``index``'s ids over its ``region`` (local 1..n, 0 background): write its core
        with unique ids, and join its objects with those of finished neighbours."""
        offset = self.next_id - 1
        n = int(ids.max(initial=0))
        self.next_id += n
        self.offsets[index] = offset
        glob = np.where(ids > 0, ids.astype(np.int64) + offset, 0).astype(np.int32)
        core = self.cores[index]
        core_ids = glob[shift(core, region)]
        self.out[core] = core_ids
        local = np.unique(core_ids)
        self.present[index] = (local[local > 0] - offset).astype(np.int64)
        for nb in self._neighbours(index):
            zone = intersect(region, self.cores[nb])  # my halo over the neighbour's core
            if zone is not None:
                strip = glob[shift(zone, region)]
                if nb in self.offsets:
                    self._join(strip, np.asarray(self.out[zone]))
                else:
                    self.pending[(index, nb)] = (zone, strip)
            waiting = self.pending.pop((nb, index), None)  # the neighbour's halo over my core
            if waiting is not None:
                zone_n, strip_n = waiting
                self._join(strip_n, core_ids[shift(zone_n, core)])

    def _join(self, halo: np.ndarray, core: np.ndarray) -> None:
        for a, b in matches(halo, core):
            if self.uf.find(a) != self.uf.find(b):
                self.uf.union(a, b)
                self.merges += 1

    def finish(self, order: Sequence[tuple[int, ...]]) -> int:
        """Number the objects 1..N (block ``order`` first, then local id) and rewrite each core.

        Returns:
            N, the number of objects.
        """
        lut = np.zeros(self.next_id, np.int32)
        final: dict[int, int] = {}
        for index in order:
            offset = self.offsets[index]
            for local in self.present[index].tolist():
                root = self.uf.find(offset + local)
                lut[offset + local] = final.setdefault(root, len(final) + 1)
        for index in order:
            core = self.cores[index]
            self.out[core] = lut[np.asarray(self.out[core])]
        self.pending.clear()
        return len(final)
