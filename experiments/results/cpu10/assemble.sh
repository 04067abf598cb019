#!/bin/bash
# Assembles the :cpu 10-class grid into DEST in the sweep's layout (done.json + results.json
# per cell), then the sweep's table. Sources: the cells run at the current preset
# (/work/runs/cpu10h), and cells whose stage 1 was trained earlier with the same stage-1
# config, evaluated with the preset's detector by experiments/ablation.py
# (variant rotated_difference: <cell>/eval/rotated_difference/results.json).
set -e
DEST=${1:-/work/main/experiments/results/cpu10}
PY=/work/main/.venv/bin/python
rm -rf "$DEST"; mkdir -p "$DEST"
$PY -m mscm_jax.sweep --root=/work/runs/cpu10h --table --export="$DEST" > /dev/null
rescored() {  # SRC_ROOT SRC_CELL CELL
  mkdir -p "$DEST/$3" "$DEST/.sweep/$3"
  cp "$1/$2/eval/rotated_difference/results.json" "$DEST/$3/results.json"
  $PY -c "import json,sys; d=json.load(open(sys.argv[1])); d.update(cell=sys.argv[2], variant='', rescored_from=sys.argv[3]); json.dump(d, open(sys.argv[4], 'w'), indent=2)" \
    "$1/.sweep/$2/done.json" "$3" "$1/$2" "$DEST/.sweep/$3/done.json"
}
for c in airplane bird deer dog; do rescored /work/runs/cpu10 $c.oneclass.s0 $c.oneclass.s0; done
for c in automobile cat; do for s in 0 1; do
  rescored /work/runs/levers $c.oneclass.s$s.rot4 $c.oneclass.s$s
done; done
$PY -m mscm_jax.sweep --root="$DEST" --table
