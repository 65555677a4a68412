#!/usr/bin/env bash
# The main job on the bundled default: segment the sample images with the default model
# (torch-free runtime), then score the result against the sample's truth.
# The sample images come from the locked split, which no model trained or tuned on.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/demo}"
.venv/bin/nseg-infer run 'examples/sample/stage1_train/*/images/*.png' --out "$out"
.venv/bin/nseg-data score "$out" --gt examples/sample/stage1_train --split all \
  --splits examples/sample/splits.json --json "$out/score.json"
echo "labels, tables, overlays and GeoJSON are in $out; scores in $out/score.json"
