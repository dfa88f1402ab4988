"""Blockwise segmentation: same classes bit for bit as in memory, the same objects, seams and corners
stitched, results independent of blocking and of the number of dask workers."""

import numpy as np
import pytest

from napari_segsuite.blockwise import make_job, output_roles, plan_blocks, segment_blocks
from napari_segsuite.inference import segment
from napari_segsuite.progress import drive

from ._helpers import disks, instance_model, random_disks, same_objects, semantic_model


def blockwise(model, img, **kw):
    outs = {r: np.zeros(img.shape, d) for r, d in output_roles(model, img).items()}
    return drive(segment_blocks(model, img, outs, device="cpu", **kw))


def test_semantic_is_bitwise_the_in_memory_result():
    img = (np.random.default_rng(0).random((300, 260)) * 255).astype(np.uint8)
    m = semantic_model()
    for tile in (64, 96):  # one tile per batch on the CPU (plan_tiles)
        ref = drive(segment(m, img, tile=tile, device="cpu")).semantic
        assert len(np.unique(ref)) == 3
        for block in (100, 150):  # the result does not depend on the blocking either
            got = blockwise(m, img, block=block, tile=tile)["classes"]
            np.testing.assert_array_equal(got, ref)


def test_tiles_under_block_borders_run_once():
    img = (np.random.default_rng(0).random((300, 260)) * 255).astype(np.uint8)
    m = semantic_model()
    job = make_job(m, img, tile=64)
    n_grid = len(job.starts[0]) * len(job.starts[1])
    blocks = plan_blocks(job, 100, 0)
    seen = []
    m.module.register_forward_hook(lambda mod, args, out: seen.append(len(args[0])))
    got = blockwise(m, img, block=100, tile=64)["classes"]
    # each grid tile once, plus at most a short batch's fill per block
    assert n_grid <= sum(seen) <= n_grid + len(blocks) * (job.batch_size - 1)
    np.testing.assert_array_equal(got, drive(segment(m, img, tile=64, device="cpu")).semantic)


def test_semantic_volume_with_a_2d_model_is_bitwise_too():
    vol = (np.random.default_rng(1).random((5, 90, 100)) * 255).astype(np.uint8)
    m = semantic_model()
    ref = drive(segment(m, vol, tile=32, device="cpu")).semantic
    got = blockwise(m, vol, block=(2, 50, 50), tile=32)["classes"]
    np.testing.assert_array_equal(got, ref)


def test_object_across_a_block_corner_is_one_object():
    m = instance_model()
    job = make_job(m, np.zeros((256, 256), np.uint8), tile=64)
    corner = plan_blocks(job, 100, 32)[0].core
    cy, cx = corner[0].stop, corner[1].stop  # the corner shared by four blocks
    img = disks((256, 256), [(cy, cx), (cy - 40, cx + 60), (30, 30)], radius=14)
    res = blockwise(m, img, block=100, halo=32, tile=64)
    ids = res["ids"]
    assert res["objects"] == 3
    around = np.unique(ids[cy - 8 : cy + 8, cx - 8 : cx + 8])
    assert len(around) == 1 and around[0] > 0  # one id on all four sides of the corner
    assert set(np.unique(ids)) == {0, 1, 2, 3}  # numbered 1..N, none counted twice


def test_instances_are_the_in_memory_objects():
    img, _ = random_disks((400, 360), 60)
    m = instance_model()
    ref = drive(segment(m, img, tile=64, device="cpu")).instances
    res = blockwise(m, img, block=100, halo=32, tile=64)
    assert res["objects"] == ref.max() == 60
    assert same_objects(res["ids"], ref) and same_objects(ref, res["ids"])


def test_touching_objects_across_a_seam_stay_apart():
    m = instance_model()
    job = make_job(m, np.zeros((200, 200), np.uint8), tile=64)
    cut = plan_blocks(job, 100, 32)[0].core[1].stop
    img = disks((200, 200), [(100, cut - 10), (100, cut + 10)], radius=10)  # two disks touching at the seam
    ref = drive(segment(m, img, tile=64, device="cpu")).instances
    res = blockwise(m, img, block=100, halo=32, tile=64)
    assert res["objects"] == ref.max() == 2 and same_objects(res["ids"], ref)


def test_the_same_result_from_one_and_two_dask_workers(tmp_path):
    from distributed import Client, LocalCluster

    from napari_segsuite.model_files import save_model

    img = (np.random.default_rng(3).random((240, 220)) * 255).astype(np.uint8)
    save_model(semantic_model(), tmp_path / "sem")  # workers load the model from its file
    from napari_segsuite.model_files import load_model

    sem = load_model(tmp_path / "sem")
    ref = blockwise(sem, img, block=100, tile=64)["classes"]
    for n in (1, 2):
        with (
            LocalCluster(n_workers=n, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            got = blockwise(sem, img, block=100, tile=64, client=client, model_path=str(tmp_path / "sem"))
        np.testing.assert_array_equal(got["classes"], ref)


def test_object_ids_do_not_depend_on_the_order_blocks_finish():
    from napari_segsuite.blockwise import run_block
    from napari_segsuite.stitch import Stitcher

    img, _ = random_disks((300, 260), 40, seed=5)
    m = instance_model()
    job = make_job(m, img, tile=64, device="cpu")
    job.wants_ids, job.wants_classes = True, False
    blocks = plan_blocks(job, 100, 32)
    results = {b.index: drive(run_block(m, job, b, img)) for b in blocks}
    outs = []
    for order in (blocks, blocks[::-1], blocks[1::2] + blocks[::2]):
        st = Stitcher(np.zeros(img.shape, np.int32), {b.index: b.core for b in blocks})
        for b in order:
            st.add(b.index, b.region, results[b.index].ids)
        st.finish([b.index for b in blocks])
        outs.append(st.out)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


def test_lazy_input_is_read_block_by_block(tmp_path):
    import dask.array as da

    img = (np.random.default_rng(0).random((200, 180)) * 255).astype(np.uint8)
    lazy = da.from_array(img, chunks=50)
    m = semantic_model()
    np.testing.assert_array_equal(
        blockwise(m, lazy, block=100, tile=64)["classes"], blockwise(m, img, block=100, tile=64)["classes"]
    )


def test_resume_skips_written_blocks():
    img = (np.random.default_rng(0).random((200, 180)) * 255).astype(np.uint8)
    m = semantic_model()
    seen = []
    outs = {"classes": np.full(img.shape, 9, np.uint8)}
    drive(segment_blocks(m, img, outs, block=100, tile=64, device="cpu", skip={(0, 0)}, on_block=seen.append))
    assert (0, 0) not in seen and len(seen) >= 3
    assert (outs["classes"][:10, :10] == 9).all() and (outs["classes"][-10:, -10:] != 9).all()
    with pytest.raises(ValueError, match="class labels only"):
        drive(segment_blocks(instance_model(), img, {"ids": np.zeros(img.shape, np.int32)}, skip={(0, 0)}, tile=64))


def test_the_heap_is_trimmed_after_each_block(monkeypatch):
    """Resident memory does not grow with the image: freed heap pages go back to the system after each block."""
    from napari_segsuite import blockwise
    from napari_segsuite.heap import trim_heap

    calls = []
    monkeypatch.setattr(blockwise, "trim_heap", lambda: calls.append(1) or trim_heap())
    img = (np.random.default_rng(0).random((200, 180)) * 255).astype(np.uint8)
    seen = []
    blockwise_out = blockwise.segment_blocks(
        semantic_model(), img, {"classes": np.zeros(img.shape, np.uint8)}, block=100, tile=64, device="cpu",
        on_block=seen.append,
    )  # fmt: skip
    drive(blockwise_out)
    assert len(calls) == len(seen) > 1  # once per block


class _FailingRead:
    """An image whose blocks fail below row ``bad`` (a file that breaks halfway; the normalisation's
    full-width bands read before the blocks do not)."""

    def __init__(self, img, bad):
        self.img, self.bad, self.shape, self.dtype, self.ndim = img, bad, img.shape, img.dtype, img.ndim

    def __getitem__(self, box):
        if box[1] != slice(None) and box[0].stop > self.bad:
            raise OSError("chunk unreadable")
        return self.img[box]


def test_a_read_or_post_processing_error_in_the_threads_reaches_the_caller():
    import threading

    img = (np.random.default_rng(0).random((300, 260)) * 255).astype(np.uint8)
    m = semantic_model()
    outs = {r: np.zeros(img.shape, d) for r, d in output_roles(m, img).items()}
    # the next block is read ahead in a thread: its failure is raised here, the blocks before it written
    with pytest.raises(OSError, match="unreadable"):
        drive(segment_blocks(m, _FailingRead(img, 200), outs, device="cpu", block=100, tile=64))
    assert outs["classes"][:50].any()
    assert not [t for t in threading.enumerate() if t.name.startswith("segsuite-")]

    def broken(*a, **k):
        raise ValueError("post-processing broke")

    m2 = instance_model()
    import napari_segsuite.tasks.instance as inst

    orig, inst.InstanceTask.postprocess = inst.InstanceTask.postprocess, broken
    try:
        with pytest.raises(ValueError, match="broke"):
            drive(segment_blocks(m2, img, {"ids": np.zeros(img.shape, np.int32)}, device="cpu", block=100, tile=64))
    finally:
        inst.InstanceTask.postprocess = orig


def test_closing_the_run_early_stops_its_threads():
    import threading

    img = (np.random.default_rng(0).random((300, 260)) * 255).astype(np.uint8)
    m = semantic_model()
    outs = {r: np.zeros(img.shape, d) for r, d in output_roles(m, img).items()}
    work = segment_blocks(m, img, outs, device="cpu", block=100, tile=64)
    next(work)
    work.close()  # the user's Cancel
    assert not [t for t in threading.enumerate() if t.name.startswith("segsuite-")]
