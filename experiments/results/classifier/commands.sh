#!/bin/bash
# Issue 25 item 6: the unbalanced BCE head (stage2.classifier) measured at :cpu, 6d8c199.
# Grid with the head on; then each cell's stage 2 retrained without it (stage 1 shared).
cd /work/runs/repo6
export TFDS_DATA_DIR=/work/shared/tfds PYTHONPATH=/work/runs/repo6
PY=/work/main/.venv/bin/python
$PY -m mscm_jax.sweep --root=/work/runs/clf --config=configs/cifar10_unbalanced.py:cpu \
  --classes=automobile,cat --seeds=0,1 --settings=unbalanced:0.05 --set stage2.classifier=True
$PY - <<'PYEOF'
import glob, json, os, shutil, subprocess, sys
for cell in sorted(glob.glob("/work/runs/clf/*.s[01]")):
  name = os.path.basename(cell)
  off = f"/work/runs/clf_off/{name}"
  if os.path.exists(f"{off}/results.json") or not os.path.exists(f"{cell}/results.json"):
    continue
  shutil.rmtree(off, ignore_errors=True)
  shutil.copytree(cell, off)
  shutil.rmtree(f"{off}/stage2")
  os.remove(f"{off}/results.json")
  argv = json.load(open(f"/work/runs/clf/.sweep/{name}/cell.json"))["argv"]
  with open(f"{off}.log", "w") as log:
    rc = subprocess.call([sys.executable, "-m", "mscm_jax.main", *argv,
                          "--config.stage2.classifier=False", "--discard_stale",
                          f"--workdir={off}"], stdout=log, stderr=subprocess.STDOUT)
  print(name, "off rc", rc, flush=True)
PYEOF
