#!/usr/bin/env bash
# One-step setup: a virtual environment in .venv with all four packages installed editable.
# Idempotent, so the README's two commands can both start with it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# Pinned: these builds install from this machine's local disk; an unpinned torch pulls several GB.
"${PIP[@]}" torch==2.14.1 torchvision==0.29.1
# nseg-infer's extras: CZI/ND2 readers (bioio), the napari plugin (napari without a Qt
# backend, which is all the headless tests need), dask (`run --cluster`) and OpenVINO; nseg-export's
# bioimageio extra (bioimageio.core, to test-run the bioimage.io packages it writes).
"${PIP[@]}" -e packages/nseg-data[coco] -e 'packages/nseg-infer[formats,napari,dask,openvino]' -e packages/nseg-train -e 'packages/nseg-export[fp16,simplify,bioimageio]' \
  pytest hypothesis ruff
