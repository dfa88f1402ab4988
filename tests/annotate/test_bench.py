"""bench/annotate.py, the simulated annotator, on two tiny images: its JSON keys and sane numbers."""

import importlib.util
import json
from pathlib import Path

import tifffile

from napari_segsuite import sample_data as sd

BENCH = Path(__file__).parents[2] / "bench" / "annotate.py"


def test_simulated_annotator_prints_one_json_object(tmp_path, capsys):
    for d in ("images", "labels"):
        (tmp_path / d).mkdir()
    for k in range(2):
        s = sd.nuclei_2d(seed=10 + k, shape=(96, 96))
        tifffile.imwrite(tmp_path / "images" / f"n{k}.tif", s["image"])
        tifffile.imwrite(tmp_path / "labels" / f"n{k}_mask.tif", s["instances"])
    spec = importlib.util.spec_from_file_location("bench_annotate", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = ["--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"), "--json", "--max-objects", "4"]
    assert bench.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"no_model"}
    r = report["no_model"]
    assert {"objects", "noc90", "iou_at_1", "ms_per_click"} <= set(r)
    assert r["objects"] == 8 and 1 <= r["noc90"] <= 20 and 0 < r["iou_at_1"] <= 1 and r["ms_per_click"] > 0
