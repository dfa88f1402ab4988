"""bench/annotate.py, the simulated annotator, on two tiny images: its JSON keys and sane numbers."""

import importlib.util
import json
from pathlib import Path

import tifffile

from napari_segsuite import sample_data as sd

BENCH = Path(__file__).parents[2] / "bench" / "annotate.py"


def _bench(tmp_path):
    for d in ("images", "labels"):
        (tmp_path / d).mkdir()
    for k in range(2):
        s = sd.nuclei_2d(seed=10 + k, shape=(96, 96))
        tifffile.imwrite(tmp_path / "images" / f"n{k}.tif", s["image"])
        tifffile.imwrite(tmp_path / "labels" / f"n{k}_mask.tif", s["instances"])
    spec = importlib.util.spec_from_file_location("bench_annotate", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_simulated_annotator_prints_one_json_object(tmp_path, capsys):
    bench = _bench(tmp_path)
    args = ["--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"), "--json", "--max-objects", "4"]
    assert bench.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"no_model"}
    r = report["no_model"]
    assert {"objects", "noc90", "iou_at_1", "ms_per_click"} <= set(r)
    assert r["objects"] == 8 and 1 <= r["noc90"] <= 20 and 0 < r["iou_at_1"] <= 1 and r["ms_per_click"] > 0


def test_histories_hold_each_objects_clicks(tmp_path, capsys):
    """``--histories`` writes one JSON line per object: its clicks in order, the IoU and size after
    each, as many as the clicks it took (the last reaching IoU 0.9 where it was reached)."""
    bench = _bench(tmp_path)
    out = tmp_path / "h.jsonl"
    args = ["--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"), "--json"]
    assert bench.main([*args, "--max-objects", "3", "--histories", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == report["no_model"]["objects"] == 6
    assert {r["source"] for r in rows} == {"no_model"} and {r["image"] for r in rows} == {0, 1}
    for r in rows:
        hist = r["history"]
        assert len(hist) == r["clicks"] and r["area"] > 0
        assert hist[0][2] is True  # the first click is positive, at the object's centre
        assert all(len(h) == 5 and 0 <= h[3] <= 1 for h in hist)
        assert (hist[-1][3] >= bench.TARGET) == r["reached"]
