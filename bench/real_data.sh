#!/usr/bin/env bash
# The real nuclei images of bench/learning.py's nuclei-real and nuclei-3d-real cases: the test images
# that ship inside the StarDist package (a 2D fluorescence image from the 2018 Data Science Bowl with
# 125 annotated nuclei, and a small anisotropic 3D nuclei volume with 51), taken from its wheel on the
# package registry into real-data/ (or $SEGSUITE_REAL). Data for benchmarks only: never in git, never
# needed by a test.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${SEGSUITE_REAL:-real-data}
PY=${PY:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q --no-deps -d "$tmp" stardist==0.9.1
mkdir -p "$OUT"
"$PY" - "$tmp" "$OUT" <<'PYEOF'
import sys, zipfile
from pathlib import Path

wheel = next(Path(sys.argv[1]).glob("stardist-*.whl"))
out = Path(sys.argv[2])
with zipfile.ZipFile(wheel) as z:
    for name in ("img2d", "mask2d", "img3d", "mask3d"):
        (out / f"{name}.tif").write_bytes(z.read(f"stardist/data/images/{name}.tif"))
print(f"real nuclei images in {out}/")
PYEOF
