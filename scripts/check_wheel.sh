#!/usr/bin/env bash
# Build the wheel, install it into a fresh virtual environment with no Qt binding (torch from the
# pinned builds), and check that the engine imports and the CLI runs there. Usage:
#   bash scripts/check_wheel.sh            (PYTHON: the interpreter that builds the wheel, default .venv's)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PYTHON" -m pip wheel -q --no-deps --no-build-isolation "$ROOT" -w "$WORK/dist"
WHEEL=$(ls "$WORK"/dist/napari_segsuite-*.whl)
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q -c "$ROOT/constraints.txt" "$WHEEL"
cd "$WORK"  # not the source tree: the installed package is what imports
V="$WORK/venv/bin"
if "$V/python" -c "import qtpy" 2>/dev/null && "$V/python" -c "import qtpy.QtCore" 2>/dev/null; then
  echo "check_wheel: a Qt binding is installed; the check needs an environment without one" >&2
  exit 1
fi
"$V/python" - <<'PY'
import importlib.metadata as md
import napari_segsuite
from napari_segsuite import inference, training, export, rois  # the engine, no Qt
from napari_segsuite.model_files import load_model
from napari_segsuite.store import resolve_trained

assert napari_segsuite.__version__ == md.version("napari-segsuite"), napari_segsuite.__version__
m = load_model(resolve_trained("nuclei-unet"))  # the built-in model ships in the wheel
print("engine ok", napari_segsuite.__version__, m.card.architecture)
PY
"$V/segsuite" --help >/dev/null
"$V/segsuite" models >/dev/null
echo "check_wheel: ok ($(basename "$WHEEL"))"
