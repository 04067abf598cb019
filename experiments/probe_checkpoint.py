r"""Re-probe a stage-1 workdir (its newest checkpoint) on the validation split.

  TFDS_DATA_DIR=../shared/tfds python experiments/probe_checkpoint.py WORKDIR

k-NN AUROC of the embedding with eval-mode and with batch-statistics BatchNorm, of the
same network at initialisation, and raw-pixel k-NN on the same split: is the trained
embedding better than what it started from? A diagnostic with the config saved in
WORKDIR; like every choice, it reads the validation split, never the test split.
"""

import os
import sys

import jax
import numpy as np

from mscm_jax import knn, metrics, pipeline, stage1
from mscm_jax.runtime import checkpoints, sharding
from mscm_jax import config as config_lib
from mscm_jax.data import augment, device


def main(workdir: str) -> None:
  c = config_lib.load_json(os.path.join(workdir, "config.json"))
  split = pipeline.load_split(c)
  if not split.has_validation:
    raise SystemExit(f"{workdir}: its data has no validation split to probe on")
  parts = stage1.components(c, split.n_train, split.train_images.shape[1:],
                            sharding.make_mesh(1))
  init = parts.init_fn(jax.random.PRNGKey(c.seed))
  state, step = checkpoints.restore_latest(f"{workdir}/stage1", init)
  y = split.val_is_anomaly.astype(int)

  @jax.jit
  def batch_stats_embedding(b):
    out, _ = parts.model.apply({"params": state.params, "batch_stats": state.batch_stats},
                               augment.to_float(b), train=True, mutable=["batch_stats"])
    return out["embedding"]

  normal = split.train_images[~split.train_is_anomaly]
  bank = device.map_batches(batch_stats_embedding, normal, 500)
  val = device.map_batches(batch_stats_embedding, split.val_images, 500)
  pixels = [x.astype(np.float32) for x in (normal, split.val_images)]
  rows = {
      f"embedding, eval-mode BN (step {step})": stage1.knn_probe(parts.model, state, split),
      "embedding, batch-statistics BN": metrics.auroc(knn.knn_scores(bank, val, 5), y),
      "the same network at initialisation": stage1.knn_probe(parts.model, init, split),
      "raw pixels, cosine": metrics.auroc(knn.knn_scores(*pixels, 5), y),
      "raw pixels, mean-centred cosine": metrics.auroc(knn.knn_scores(*pixels, 5, center=True),
                                                       y),
  }
  for name, value in rows.items():
    print(f"| {name} | {value:.3f} |")


if __name__ == "__main__":
  main(sys.argv[1])
