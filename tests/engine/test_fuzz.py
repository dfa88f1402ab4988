"""Property-based tests (hypothesis) of the readers, the label mapping, normalisation, the checks and
the inference entry points: random shapes, dtypes, NaN/inf, empty and lazy huge arrays give a result
or one of the documented errors (a ``ValueError`` with a message), never another exception."""

import io
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_segsuite.checks import MAX_PIXELS, check_image_array, check_label_array, check_train_config
from napari_segsuite.inference import predict
from napari_segsuite.io import ImageReadError, read_image, read_labels
from napari_segsuite.model_files import new_model
from napari_segsuite.preprocess import LabelMap, infer_axes, normalize
from napari_segsuite.progress import drive
from napari_segsuite.samples import check_shapes
from napari_segsuite.training import TrainConfig

#: Few, small examples (CI time) drawn the same way on every run (CI never fails by chance; explore
#: locally with more examples and ``derandomize=False``).
FAST = settings(
    max_examples=30, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
SUFFIXES = [".tif", ".png", ".jpg", ".bmp", ".npy", ".nii", ".nii.gz", ".ome.tif"]
MAGIC = [b"", b"II*\x00", b"MM\x00*", b"\x89PNG\r\n\x1a\n", b"\x93NUMPY\x01\x00", b"\xff\xd8\xff\xe0", b"BM"]


def _valid_file(suffix: str) -> bytes:
    """A small valid file of the kind, to be damaged."""
    img = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 37 % 251).astype(np.uint8)
    buf = io.BytesIO()
    if suffix in (".tif", ".ome.tif"):
        import tifffile

        tifffile.imwrite(buf, img, compression="zlib")
    elif suffix == ".npy":
        np.save(buf, img)
    elif suffix in (".nii", ".nii.gz"):
        import gzip

        import nibabel as nib

        raw = nib.Nifti1Image(img[..., None], np.eye(4)).to_bytes()
        return gzip.compress(raw) if suffix == ".nii.gz" else raw
    else:
        import imageio.v3 as iio

        return iio.imwrite("<bytes>", img, extension=suffix)
    return buf.getvalue()


@st.composite
def damaged_files(draw):
    suffix = draw(st.sampled_from(SUFFIXES))
    how = draw(st.sampled_from(["random", "truncated", "flipped"]))
    if how == "random":
        return suffix, draw(st.sampled_from(MAGIC)) + draw(st.binary(max_size=200))
    data = bytearray(_valid_file(suffix))
    if how == "truncated":
        return suffix, bytes(data[: draw(st.integers(0, len(data) - 1))])
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return suffix, bytes(data)


@FAST
@given(damaged_files())
def test_readers_give_an_image_or_an_image_read_error(tmp_path_factory, file):
    suffix, data = file
    path = tmp_path_factory.mktemp("fuzz") / f"x{suffix}"
    path.write_bytes(data)
    for read in (read_image, read_labels):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                arr = read(path)
            except ImageReadError as err:
                assert str(err) and path.name in str(err)
                continue
        assert isinstance(arr, np.ndarray) and arr.dtype.kind in "biuf" and arr.size <= MAX_PIXELS


label_values = st.lists(st.integers(-300, 70_000), min_size=1, max_size=8, unique=True).map(sorted)
label_arrays = hnp.arrays(
    st.sampled_from([np.uint8, np.int16, np.int64, np.uint16]),
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6),
)


@FAST
@given(label_values, label_arrays, st.one_of(st.none(), st.integers(-1, 300)))
def test_label_map_round_trips_known_values_and_ignores_the_rest(values, labels, ignore):
    lmap = LabelMap(values, ignore=ignore)
    classes = lmap.to_classes(labels)
    assert classes.shape == labels.shape and classes.dtype == np.int64
    assert ((classes >= -1) & (classes < len(values))).all()
    known = np.isin(labels, values)
    assert (classes[~known] == -1).all()
    np.testing.assert_array_equal(lmap.to_values(classes[known]).astype(np.int64), labels[known].astype(np.int64))
    assert set(lmap.unknown_values(labels)) == {int(v) for v in np.unique(labels)} - set(values) - {ignore}


@FAST
@given(st.lists(label_arrays, min_size=1, max_size=3), st.one_of(st.none(), st.integers(0, 255)))
def test_label_map_from_labels_gives_two_or_more_classes_or_a_value_error(labels, ignore):
    try:
        lmap = LabelMap.from_labels(labels, max_classes=20, ignore=ignore)
    except ValueError as err:
        assert "distinct values" in str(err)
        return
    assert len(lmap.values) >= 2 and lmap.values == sorted(set(lmap.values)) and ignore not in lmap.values


@FAST
@given(hnp.arrays(np.float64, hnp.array_shapes(max_dims=2, max_side=4), elements=st.floats(allow_nan=True)))
def test_label_map_takes_float_labels_with_nan(labels):
    classes = LabelMap([0, 1, 2]).to_classes(labels)
    assert classes.shape == labels.shape and (classes[np.isnan(labels)] == -1).all()


@FAST
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(0, 6), st.integers(0, 6)),
        elements=st.floats(width=32, allow_nan=True, allow_infinity=True),
    ),
    st.sampled_from(
        [
            None,
            {"kind": "none"},
            {"kind": "percentile", "low": 0.0, "high": 100.0},
            {"kind": "percentile", "low": 1.0, "high": 99.8},
            {"kind": "zscore"},
        ]
    ),
)
def test_normalisation_gives_finite_values_or_a_value_error(slices, spec):
    try:
        out = normalize(slices, spec)
    except ValueError as err:
        assert str(err)
        return
    assert out.shape == slices.shape
    if spec != {"kind": "none"}:
        assert np.isfinite(out).all()


DTYPES = [np.bool_, np.uint8, np.uint16, np.int64, np.float16, np.float32, np.float64]


@st.composite
def any_images(draw):
    """Mostly shapes a user could give (2D, colour, volumes; 1-pixel sides), some anything (0-size, 1D, 5D);
    NaN and infinities among the floats (hypothesis' default elements)."""
    usual = st.integers(2, 4).flatmap(lambda n: hnp.array_shapes(min_dims=n, max_dims=n, min_side=1, max_side=9))
    shape = draw(st.one_of(usual, usual, hnp.array_shapes(min_dims=1, max_dims=5, min_side=0, max_side=6)))
    return draw(hnp.arrays(st.sampled_from(DTYPES), shape))


@pytest.fixture(scope="module")
def tiny_models():
    return {a: new_model(a, label_values=[0, 1, 3], depth=2, base_filters=4) for a in ("unet",)} | {
        "unet-instance": new_model("unet-instance", label_values=[0, 1, 2], depth=2, base_filters=4)
    }


@settings(FAST, max_examples=40)
@given(any_images(), st.sampled_from(["unet", "unet-instance"]), st.integers(16, 40))
def test_predict_gives_labels_of_the_image_shape_or_a_value_error(tiny_models, image, arch, tile):
    model = tiny_models[arch]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            labels = drive(predict(model, image, tile=tile, device="cpu"))
    except ValueError as err:
        assert str(err)
        event("refused")
        return
    event("segmented")
    spatial = infer_axes(image.shape).spatial_shape(image.shape)
    assert labels.shape == spatial and np.issubdtype(labels.dtype, np.integer)
    if arch == "unet":
        assert set(np.unique(labels).tolist()) <= {0, 1, 3}


def test_a_huge_lazy_array_is_refused_without_being_read(monkeypatch):
    da = pytest.importorskip("dask.array")
    huge = da.zeros((100_000, 100_000), dtype=np.uint16, chunks=(4096, 4096))

    def never(*args, **kwargs):
        raise AssertionError("the lazy array was read")

    monkeypatch.setattr(type(huge), "__array__", never)
    monkeypatch.setattr(type(huge), "compute", never)
    with pytest.raises(ValueError, match="10,000,000,000 values"):
        check_image_array(huge, "Layer 'big'")
    with pytest.raises(ValueError, match="more than"):
        check_shapes([huge], [huge], None, ["big"], None)
    model = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    with pytest.raises(ValueError, match="10,000,000,000 values"):
        drive(predict(model, huge, device="cpu"))
    lazy = da.zeros((3000, 3000), dtype=np.float32, chunks=1000)  # labels: checked by shape and dtype only
    check_label_array(lazy, (3000, 3000), "big")
    with pytest.raises(ValueError, match="are 3000x3000 but the image is 3000x3001"):
        check_label_array(lazy, (3000, 3001), "big")


@FAST
@given(
    hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    st.sampled_from([np.uint8, np.float32, np.complex64, np.bool_, object]),
)
def test_check_shapes_passes_matching_pairs_and_names_the_image_otherwise(image_shape, label_shape, label_dtype):
    image = np.zeros(image_shape, np.float32)
    labels = np.zeros(label_shape, label_dtype)
    try:
        check_shapes([image], [labels], None, ["a.tif"], None)
    except ValueError as err:
        assert "a.tif" in str(err)
        return
    assert labels.shape == infer_axes(image.shape).spatial_shape(image.shape) and labels.dtype.kind in "biuf"


@FAST
@given(
    st.integers(-3, 3),
    st.one_of(st.none(), st.floats(allow_nan=True)),
    st.integers(-2, 2000),
    st.one_of(st.none(), st.integers(-10, 10_000)),
    st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    st.integers(-2, 3),
)
def test_train_config_check_accepts_or_names_the_setting(epochs, budget, batch, patch, lr, patience):
    cfg = TrainConfig(epochs=epochs, time_budget=budget, batch_size=batch, patch_size=patch, lr=lr, patience=patience)
    try:
        check_train_config(cfg)
    except ValueError as err:
        assert str(err).startswith("Nothing was trained: ")
        return
    assert epochs >= 1 and 1 <= batch <= 1024 and (patch is None or 8 <= patch <= 4096) and patience >= 0
    assert lr is None or 0 < lr < float("inf")
