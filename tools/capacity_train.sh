#!/usr/bin/env bash
# Train every candidate of the capacity study for the epochs cost.json gives it, one after another,
# niced so interactive work takes precedence. Safe to re-run after a stop or a kill: a candidate
# with a checkpoint continues with --resume, and a finished one is skipped.
#   DATA=path/to/stage1_train bash tools/capacity_train.sh [RUNS_DIR] [NAMES...]
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATA:?set DATA to the stage1_train folder}"
RUNS=${1:-runs/capacity}; shift || true
COST=docs/results/capacity/cost.json
NAMES=("$@")
if [ ${#NAMES[@]} -eq 0 ]; then
  mapfile -t NAMES < <(.venv/bin/python -c "import json; print('\n'.join(json.load(open('$COST'))['candidates']))")
fi
for name in "${NAMES[@]}"; do
  read -r cfg epochs < <(.venv/bin/python -c "import json; c=json.load(open('$COST'))['candidates']['$name']; print(c['config'], c['epochs'])")
  out=$RUNS/$name
  resume=()
  if [ -f "$out/last.pt" ]; then
    done_epochs=$(.venv/bin/python -c "import csv; print(len(list(csv.DictReader(open('$out/log.csv')))))")
    if [ "$done_epochs" -ge "$epochs" ]; then echo "[capacity] $name: done ($done_epochs epochs)"; continue; fi
    resume=(--resume)
  fi
  echo "[capacity] $name: $cfg for $epochs epochs -> $out"
  nice -n 19 .venv/bin/nseg-train unet --config "$cfg" --epochs "$epochs" --data "$DATA" \
    --splits splits/dsb2018_stage1_train.json --cache .cache/dsb --out "$out" --no-progress "${resume[@]}"
done
