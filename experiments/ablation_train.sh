#!/usr/bin/env bash
# Stage-1 trainings of the issue-4 ablation (experiments/results/ablation.md): the `:cpu`
# preset with one training-time change per variant, for CIFAR-10 classes and seeds, one
# run after another (finished runs are skipped; a killed one resumes).
# Evaluation-time knobs are then measured on these checkpoints by experiments/ablation.py.
# Usage: TFDS_DATA_DIR=../shared/tfds bash experiments/ablation_train.sh ROOT [PYTHON]
#   VARIANTS="contrastive codebook" SEEDS="0 1" CLASSES="1 3" to choose (these are defaults).
set -u
root=${1:?usage: ablation_train.sh ROOT [PYTHON]}
py=${2:-python}
# Each variant names its memory settings in full: the runs used the preset as it was then
# (branch / contrastive); the preset now holds the winner, `codebook`.
declare -A variant=(
  [contrastive]="--config.memory.mode=branch"   # branch memories, per-scale NT-Xent
  [codebook]="--config.memory.mode=branch --config.memory.train=codebook"  # k-means-like loss
  [alignment]="--config.memory.mode=branch --config.loss.alignment_weight=1.0"  # + ||sg(f) - r||^2
  [replace]="--config.memory.mode=replace"      # the encoder reads the memory (the paper)
)
for seed in ${SEEDS:-0 1}; do
  for cls in ${CLASSES:-1 3}; do
    for name in ${VARIANTS:-contrastive codebook alignment}; do
      wd="$root/${name}_c${cls}_s${seed}"
      if [ -f "$wd/stage1/FINISHED.json" ]; then continue; fi
      mkdir -p "$wd"
      echo "$(date +%T) start $wd"
      # shellcheck disable=SC2086
      "$py" -m mscm_jax.main --config=configs/cifar10_oneclass.py:cpu \
        --config.dataset.normal_class="$cls" --config.seed="$seed" --config.stop_after=stage1 \
        ${variant[$name]} --workdir="$wd" > "$wd.log" 2>&1 || echo "failed: $wd"
      echo "$(date +%T) done $wd"
    done
  done
done
