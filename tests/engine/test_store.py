import json
import zipfile

import pytest

from napari_segsuite.model_files import load_model, new_model, save_model
from napari_segsuite.store import delete_model, export_model, import_model, list_models, model_dir, rename_model


@pytest.fixture
def stored():
    m = new_model("unet", label_values=[0, 1], base_filters=4, depth=2)
    m.card.name = "cells"
    save_model(m, model_dir() / "cells")
    return m


def test_rename_delete(stored):
    new = rename_model("cells", "nuclei v2")
    assert new.name == "nuclei v2" and load_model(new).card.name == "nuclei v2"
    assert [m.name for m in list_models() if not m.builtin] == ["nuclei v2"]
    with pytest.raises(FileNotFoundError):
        rename_model("cells", "x")
    with pytest.raises(ValueError, match="built-in"):
        delete_model("nuclei-unet")
    delete_model("nuclei v2")
    assert [m.name for m in list_models() if not m.builtin] == []


def test_rename_refuses_existing_name(stored):
    save_model(new_model("unet", label_values=[0, 1], base_filters=4, depth=2), model_dir() / "other")
    with pytest.raises(ValueError, match="exists"):
        rename_model("cells", "other")


def test_export_import_round_trip(stored, tmp_path):
    f = export_model("cells", tmp_path)
    assert f.name == "cells.segsuite.zip" and set(zipfile.ZipFile(f).namelist()) == {"model.json", "model.safetensors"}
    back = import_model(f)
    assert back.name == "cells-2"  # never replaces the model already there
    a, b = load_model(model_dir() / "cells"), load_model(back)
    assert all((x == y).all() for x, y in zip(a.module.state_dict().values(), b.module.state_dict().values()))


def test_import_rejects_foreign_files(tmp_path):
    bad = tmp_path / "x.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("model.json", json.dumps({"architecture": "unet"}))
    with pytest.raises(ValueError, match="not an exported model"):
        import_model(bad)
    (tmp_path / "y.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a zip"):
        import_model(tmp_path / "y.zip")
