"""Train the built-in demo model shipped in the package (``builtin/nuclei-unet``).

Deterministic: generated nuclei images (seeds 1000..1015, two sizes), a UNet from random weights,
a fixed time budget. Weights are stored as float16 to halve the file; they load into float32.

    .venv/bin/python scripts/make_builtin.py [--seconds 180]
"""

import argparse
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from napari_segsuite import sample_data as sd
from napari_segsuite.model_files import WEIGHTS_FILE, new_model, save_model
from napari_segsuite.progress import drive
from napari_segsuite.training import TrainConfig, train

p = argparse.ArgumentParser()
p.add_argument("--seconds", type=float, default=180)
args = p.parse_args()
samples = [sd.nuclei_2d(seed=1000 + i, shape=(256, 256) if i % 2 else (384, 320)) for i in range(16)]
model = new_model("unet", label_values=[0, 1], class_names=["background", "nucleus"])
res = drive(
    train(
        model,
        [s["image"] for s in samples],
        [s["semantic"] for s in samples],
        TrainConfig(time_budget=args.seconds, patch_size=192),
    )
)
res.model.card.name = "nuclei-unet"
res.model.card.description = "UNet trained on the generated nuclei samples (a demo model, not for real data)."
(res.model.card.training or {}).pop("history", None)
out = Path(__file__).resolve().parents[1] / "src/napari_segsuite/builtin/nuclei-unet"
shutil.rmtree(out, ignore_errors=True)
save_model(res.model, out)
state = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(out / WEIGHTS_FILE)).items()}
save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "napari-segsuite"})
print(out, res.stopped, (res.model.card.metrics or {}).get("mean_iou"))
