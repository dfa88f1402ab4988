"""The typed model card: today's files keep loading, and a bad card is refused naming the field."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_segsuite.card import FORMAT_VERSION, CardError, ModelCard, migrate
from napari_segsuite.model_files import load_model, new_model, save_model

FIXTURES = Path(__file__).parents[1] / "fixtures" / "cards_v1"


def test_format_1_model_files_load_and_run(tmp_path):
    """Models written by napari-segsuite 0.1 (format 1) load, run, and save again as the current format."""
    for name in ("unet-v1", "unet-instance-v1"):
        m = load_model(FIXTURES / name)
        assert m.card.format == FORMAT_VERSION and m.card.name == name
        x = torch.randn(1, 1, 32, 32)
        with torch.no_grad():
            out = m.module(x)
        assert out.shape == (1, m.card.num_classes, 32, 32)
        saved = save_model(m, tmp_path / name)
        data = json.loads((saved / "model.json").read_text())
        assert data["format"] == FORMAT_VERSION and "path" not in data
        with torch.no_grad():
            assert torch.equal(load_model(saved).module(x), out)
    assert load_model(FIXTURES / "unet-v1").card.metrics["mean_iou"] == 0.5


def test_format_1_panoptic_card_moves_thing_classes_out_of_the_builder_arguments():
    data = json.loads((FIXTURES / "panoptic-v1.json").read_text())
    assert data["build"]["thing_classes"] == [2, 3]
    card = ModelCard.from_json(data)
    assert card.thing_classes == [2, 3] and "thing_classes" not in card.build
    assert data["build"]["thing_classes"] == [2, 3]  # the input is not modified
    assert migrate({**data, "build": {}})["thing_classes"] == [1]  # format 1's default


def _card(tmp_path):
    m = new_model("unet", label_values=[0, 1], depth=2, base_filters=4)
    path = save_model(m, tmp_path / "m")
    return path, json.loads((path / "model.json").read_text())


@pytest.mark.parametrize(
    "change, field",
    [
        ({"colour": "red"}, "colour"),
        ({"num_classes": "two"}, "num_classes"),
        ({"in_channels": 10_000}, "in_channels"),
        ({"num_classes": 10**9}, "num_classes"),
        ({"label_values": [0, 1, 2]}, "card"),
        ({"architecture": "../../etc/passwd"}, "architecture"),
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"build": {"depth": {"__class__": "os.system"}}}, "build"),
        ({"format": 99}, "format"),
        ({"ignore_value": 1}, "card"),
    ],
)
def test_a_bad_card_gives_one_error_naming_the_field(tmp_path, change, field):
    path, data = _card(tmp_path)
    (path / "model.json").write_text(json.dumps({**data, **change}))
    with pytest.raises(CardError, match=f"'{field}'" if field != "card" else "label_values|ignore_value"):
        load_model(path)


def test_a_build_argument_the_architecture_does_not_take_is_named(tmp_path):
    path, data = _card(tmp_path)
    data["build"]["colour"] = "red"
    (path / "model.json").write_text(json.dumps(data))
    with pytest.raises(CardError, match="does not take colour"):
        load_model(path)


def test_a_card_that_is_not_json_is_refused(tmp_path):
    path, _ = _card(tmp_path)
    (path / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable model card"):
        load_model(path)
    shutil.rmtree(path)


def test_card_round_trip_keeps_every_field(tmp_path):
    m = new_model("panoptic-deeplab", label_values=[0, 1, 2], thing_classes=[2])
    m.card.metrics = {"pq": 0.5, "score": 0.5}
    again = ModelCard.from_json(json.loads(json.dumps(m.card.to_json())))
    assert again == m.card and again.thing_classes == [2] and np.isclose(again.metrics["pq"], 0.5)


@pytest.mark.parametrize(
    "change, field, needle",
    [
        ({"spatial_dims": 3}, "spatial_dims", "is a 2D model, not 3"),  # used to build, then fail in conv2d
        ({"divisible_by": 7}, "divisible_by", "multiples of 1"),
        ({"normalization": {"kind": "percentile", "low": "abc", "high": 99}}, "normalization", "low must be"),
        ({"normalization": {"kind": "percentile", "low": 99, "high": 1}}, "normalization", "must be below high"),
        ({"normalization": {"kind": "percentile", "low": True, "high": 99}}, "normalization", "low must be"),
        ({"normalization": {"kind": "percentile"}}, "normalization", "low must be"),
        ({"normalization": {"kind": "zscore"}}, "normalization", "'zscore' is not a normalisation"),
        ({"normalization": {"kind": "none", "low": 1}}, "normalization", "unknown key"),
        ({"build": {"depth": -1}}, "build", "cannot be built"),  # was an IndexError
        ({"build": {"base_filters": 100_000}}, "build", "parameters, more than"),  # would exhaust memory
        ({"build": {"depth": 60}}, "build", "cannot be built"),
        ({"build": {"base_filters": 10**9}}, "build", "beyond the"),
        ({"build": {"upsample": "../../etc/passwd"}}, "build", "never paths"),
        ({"build": {"upsample": "/tmp/x"}}, "build", "never paths"),
        ({"build": {"upsample": "hf-hub:org/model"}}, "build", "never paths"),
        ({"build": {"depth": float("nan")}}, "build", "not a usable number"),
        ({"build": {"depth": list(range(100))}}, "build", "more than 64"),
    ],
)
def test_a_card_that_does_not_fit_its_architecture_is_refused_naming_the_field(tmp_path, change, field, needle):
    path, data = _card(tmp_path)
    if "build" in change:
        change = {"build": {**data["build"], **change["build"]}}
    (path / "model.json").write_text(json.dumps({**data, **change}))
    with pytest.raises(CardError, match=f"field '{field}'") as err:
        load_model(path)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_format_2_panoptic_card_without_thing_classes_is_refused():
    """It used to become stuff-only silently; [] (no thing class) stays a choice a card can state."""
    data = migrate(json.loads((FIXTURES / "panoptic-v1.json").read_text()))
    assert data["format"] == FORMAT_VERSION and data["thing_classes"] == [2, 3]
    del data["thing_classes"]
    with pytest.raises(CardError, match="field 'thing_classes': missing"):
        ModelCard.from_json(data)
    assert ModelCard.from_json({**data, "thing_classes": []}).thing_classes == []
    semantic = json.loads((FIXTURES / "unet-v1" / "model.json").read_text())
    assert ModelCard.from_json({**semantic, "format": 2}).thing_classes == []  # not a panoptic card: not needed


def test_a_card_json_nested_too_deep_or_too_large_is_a_card_error(tmp_path, monkeypatch):
    path, _ = _card(tmp_path)
    (path / "model.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CardError, match="not a readable model card"):
        load_model(path)
    monkeypatch.setattr("napari_segsuite.model_files.MAX_CARD_BYTES", 10)
    (path / "model.json").write_text(json.dumps({"name": "x" * 20}))
    with pytest.raises(CardError, match="too large"):
        load_model(path)


def test_format_2_distance_cards_keep_their_seeding():
    """Format 2 seeded distance-map models above a level of 0.5 unless calibration said otherwise; format 3
    seeds from h-maxima by default. An old card keeps meaning what it meant; a calibrated one keeps its choice."""
    card = new_model("unet-instance", label_values=[0, 1, 2], distance=True, depth=2, base_filters=4).card
    old = {**card.model_dump(mode="json"), "format": 2, "postprocessing": {}}
    assert ModelCard.from_json(old).postprocessing == {"seed_threshold": 0.5}
    tuned = {**old, "postprocessing": {"mask_threshold": 0.4, "seed_threshold": 0.6}}
    assert ModelCard.from_json(tuned).postprocessing == {"mask_threshold": 0.4, "seed_threshold": 0.6}
    three = new_model("unet-instance", label_values=[0, 1, 2], distance=False, depth=2, base_filters=4).card
    assert ModelCard.from_json({**three.model_dump(mode="json"), "format": 2}).postprocessing == {}
    assert ModelCard.from_json(card.model_dump(mode="json")).postprocessing == {}  # format 3: h-maxima
