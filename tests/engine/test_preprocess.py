import numpy as np
import pytest

from napari_segsuite.preprocess import LabelMap, infer_axes, normalize, to_slices


@pytest.mark.parametrize(
    "shape,volume,rgb",
    [((64, 64), False, False), ((64, 64, 3), False, True), ((10, 64, 64), True, False), ((10, 64, 64, 3), True, True)],
)
def test_axes(shape, volume, rgb):
    axes = infer_axes(shape)
    assert (axes.volume, axes.rgb) == (volume, rgb)


def test_bad_shape_message():
    with pytest.raises(ValueError, match="not supported"):
        infer_axes((2, 3, 64, 64, 5))


def test_channels_adapt_to_model():
    rgb = np.random.rand(32, 32, 3)
    assert to_slices(rgb, infer_axes(rgb.shape), 1).shape == (1, 1, 32, 32)
    gray = np.random.rand(5, 32, 32)
    assert to_slices(gray, infer_axes(gray.shape), 3).shape == (5, 3, 32, 32)


def test_normalisation_removes_gain_and_offset():
    rng = np.random.default_rng(0)
    img = rng.random((1, 1, 64, 64)).astype(np.float32)
    a = normalize(img)
    b = normalize(img * 37.0 + 1000.0)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_label_map_255_round_trip():
    lab = np.array([[0, 255], [255, 0]], np.uint8)
    lmap = LabelMap.from_labels([lab])
    assert lmap.values == [0, 255]
    classes = lmap.to_classes(lab)
    assert classes.tolist() == [[0, 1], [1, 0]]
    np.testing.assert_array_equal(lmap.to_values(classes), lab)
    assert lmap.to_classes(np.array([7])).tolist() == [-1]


def test_instance_image_is_refused_as_classes():
    with pytest.raises(ValueError, match="instance image"):
        LabelMap.from_labels([np.arange(100).reshape(10, 10)])
