#!/usr/bin/env bash
# Set up a fresh Debian machine: the system libraries napari needs (Xvfb, GL, xcb), a virtual
# environment, torch from the pinned builds (never another), then this package with its test extras.
set -euo pipefail
VENV=${VENV:-.venv}
cd "$(dirname "$0")/.."

if ! command -v xvfb-run >/dev/null 2>&1 || ! ldconfig -p | grep -q libxcb-cursor; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
      xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 libxcb-render-util0 \
      libxcb-randr0 libxcb-shape0 libxcb-cursor0 libxkbcommon-x11-0 libgl1 libegl1 libglib2.0-0 \
      libfontconfig1 libdbus-1-3 >/dev/null
  else
    echo "setup: Xvfb and the Qt/GL libraries are missing; as root run:" >&2
    echo "  apt-get install xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-cursor0 libxkbcommon-x11-0 libgl1 libegl1" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/pip"
# torch first and pinned: constraints.txt keeps every later install on these exact builds.
"$PIP" install -q -c constraints.txt torch torchvision
"$PIP" install -q -c constraints.txt -e ".[test,qt,big,export]"
"$VENV/bin/npe2" validate napari-segsuite --imports >/dev/null
echo "setup: ready ($VENV)"
