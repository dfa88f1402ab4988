import numpy as np
import pytest
import torch

from napari_segsuite.inference import pick_device, predict
from napari_segsuite.model_files import new_model
from napari_segsuite.progress import Progress, drive
from napari_segsuite.tiling import (
    OVERLAP,
    blend_window,
    grid_starts,
    margin,
    plan_tiles,
    predict_probs,
    tile_shape,
    tile_starts,
)


class Pointwise(torch.nn.Module):
    """A 1x1 'model' whose output at a pixel depends only on that pixel: tiling must not change it."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 1)

    def forward(self, x):
        return self.conv(x)


def test_tile_starts_cover_the_image():
    for size, tile in [(100, 32), (512, 512), (513, 128), (20, 64)]:
        starts = tile_starts(size, tile, int(tile * 0.75))
        covered = np.zeros(size, bool)
        for s in starts:
            covered[s : s + tile] = True
        assert covered.all() and max(starts) + min(tile, size) == size


def test_margin_is_pixels_or_a_share_of_the_tile():
    assert margin(512, 32) == 32 and margin(512, 0.25) == 128 and margin(40, 32) == 10 and margin(64, 0) == 0
    assert margin(64, 0.5) == 32 and margin(32, 32) == 8  # a volume's Z tiles keep the share they had


@pytest.mark.parametrize("overlap", [OVERLAP, 16, 0.25])
def test_fitted_tiles_are_as_few_and_as_small_as_cover_the_image(overlap):
    for n, t, m in [(4096, 512, 1), (2048, 512, 16), (1000, 256, 8), (513, 512, 1), (300, 64, 4), (100, 512, 1)]:
        (ts,), (padded,) = tile_shape((n,), (t,), m, overlap)
        [starts] = grid_starts((padded,), (ts,), overlap)
        o = margin(_round(t, m), overlap)
        assert ts <= max(_round(t, m), _round(n, m)) and ts % m == 0 and padded == max(n, ts)
        if n > t:
            assert len(starts) == -(-(n - o) // (_round(t, m) - o))  # no more tiles than full-size ones take
            assert all(b - a <= ts - margin(ts, overlap) for a, b in zip(starts, starts[1:]))  # overlap kept
        assert starts[0] == 0 and starts[-1] + ts == padded
    assert tile_shape((4096, 4096), (512, 512), 1, 32) == ((484, 484), (4096, 4096))


def _round(v, m):
    return -(-v // m) * m


def test_tiles_grow_where_that_computes_fewer_pixels():
    # 2048 in tiles of 512 by 4: 25 tiles of 436 in 7 batches (28 run); in tiles of 1024 by 1: 9 of 704
    assert plan_tiles((2048, 2048), (512, 512), 4, 1, 32) == ((1024, 1024), 1)
    assert plan_tiles((300, 300), (512, 512), 4, 1, 32) == ((512, 512), 4)  # one tile either way
    assert plan_tiles((2048, 2048), (512, 512), 2, 1, 32) == ((512, 512), 2)  # no smaller batch to trade
    assert plan_tiles((8, 64, 64), (8, 32, 32), 4, 1, 4) == ((8, 32, 32), 4)  # 3D tiles as asked


def test_cpu_runs_tiles_as_asked_one_at_a_time():
    assert plan_tiles((2048, 2048), (512, 512), 4, 1, 32, cpu=True) == ((512, 512), 1)
    assert plan_tiles((8, 64, 64), (8, 32, 32), 4, 1, 4, cpu=True) == ((8, 32, 32), 4)  # 3D as elsewhere
    seen = []
    module = Pointwise().eval()
    module.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    img = np.zeros((1, 300, 300), np.float32)
    drive(predict_probs(module, img, num_classes=3, tile=128, batch_size=4, device=torch.device("cpu")))
    assert len(seen) == 9 and {s[0] for s in seen} == {1}  # 9 tiles, one per batch


def test_tiled_equals_whole_for_pointwise_model():
    torch.manual_seed(0)
    module = Pointwise().eval()
    img = np.random.default_rng(0).random((1, 300, 217)).astype(np.float32)
    reports, reports_t = [], []
    whole = drive(predict_probs(module, img, num_classes=3, tile=1024), reports.append)
    tiled = drive(predict_probs(module, img, num_classes=3, tile=64, overlap=0.25, batch_size=3), reports_t.append)
    assert len(reports) == 1 and len(reports_t) > 3
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_blend_window_peaks_in_the_middle():
    w = blend_window((32, 32), 8)
    assert w[16, 16] == pytest.approx(1.0) and w[0, 0] < 0.05


def test_predict_volume_slice_by_slice_and_progress():
    model = new_model("unet", label_values=[0, 5], depth=2, base_filters=4)
    vol = np.random.default_rng(0).random((3, 40, 50)).astype(np.float32)
    reports = []
    labels = drive(predict(model, vol, tile=32, device="cpu"), reports.append)
    assert labels.shape == (3, 40, 50) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 5}
    assert all(isinstance(r, Progress) for r in reports)
    assert reports[-1].step == reports[-1].total and len(reports) >= 3


def test_predict_can_be_stopped_between_tiles():
    model = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    gen = predict(model, np.zeros((256, 256), np.float32), tile=64, batch_size=1, device="cpu")
    first = next(gen)
    assert first.step == 1 and first.total > 1
    gen.close()  # what a cancelled worker does; no error, no further work


def test_rgb_image_into_gray_model():
    model = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    out = drive(predict(model, np.zeros((33, 35, 3), np.uint8), device="cpu"))
    assert out.shape == (33, 35)


def test_auto_device_is_a_device():
    dev = pick_device("auto")
    assert dev.type == ("cuda" if torch.cuda.is_available() else dev.type)
    assert pick_device("cpu").type == "cpu"
