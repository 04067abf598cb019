"""One run in one workdir: data, then the stages that exist, each resumable.

`run(config, workdir)` is what `python -m mscm_jax.main` calls; a notebook can call it
(or the pieces below) the same way.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mscm_jax import config as config_lib
from mscm_jax import sharding, stage1
from mscm_jax.data import augment, device, protocols, sources


def load_split(config: ml_collections.ConfigDict) -> protocols.ADSplit:
  """Decodes the dataset once and applies the config's protocol."""
  train, test = sources.load_splits(config.dataset)
  return protocols.make_split(config, train, test)


def image_grid(images: np.ndarray, columns: int) -> np.ndarray:
  """[N, H, W, 3] float in [0, 1] -> one uint8 picture, 2-pixel white gutters."""
  n, h, w, _ = images.shape
  rows = -(-n // columns)
  grid = np.ones((rows * (h + 2) + 2, columns * (w + 2) + 2, 3), np.float32)
  for i, im in enumerate(images):
    r, c = divmod(i, columns)
    grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + c * (w + 2):2 + c * (w + 2) + w] = im
  return np.round(np.clip(grid, 0, 1) * 255).astype(np.uint8)


def preview_augmentations(config: ml_collections.ConfigDict, split: protocols.ADSplit,
                          mesh: jax.sharding.Mesh, out_dir: str) -> dict[str, Any]:
  """Draws one training batch on device, augments it twice, saves a picture and stats.

  Rows of the picture: originals, view 1, view 2 (what stage 1 will contrast).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  data = device.put_on_device(split.train_images, split.train_is_anomaly, mesh)
  n_dev = mesh.devices.size
  n = max(n_dev, config.preview.num_images // n_dev * n_dev)
  key = jax.random.key(config.seed)
  images, _ = device.draw_batch(data, jax.random.fold_in(key, 0), 0, n, mesh)
  params = augment.AugmentParams.from_config(config.augment)
  view1, view2 = jax.jit(augment.two_views, static_argnums=2)(jax.random.fold_in(key, 1),
                                                              images, params)
  originals = np.asarray(augment.to_float(images))
  stack = np.concatenate([originals, np.asarray(view1), np.asarray(view2)])
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "augmented_views.png")
  grid = image_grid(stack, columns=n)
  Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3),
                               Image.Resampling.NEAREST).save(path)
  views = jnp.concatenate([view1, view2])
  return {
      "picture": path,
      "batch_shape": list(view1.shape),
      "batch_sharding": str(view1.sharding.spec),
      "views_min": float(views.min()),
      "views_max": float(views.max()),
      "views_mean": float(views.mean()),
      "originals_mean": float(originals.mean()),
      "devices": n_dev,
  }


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs everything the project implements so far for `config`, writing into `workdir`."""
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  t0 = time.time()
  split = load_split(config)
  summary: dict[str, Any] = {
      "dataset": config.dataset.name,
      "setting": config.setting,
      "seed": config.seed,
      **split.summary(),
      "load_seconds": round(time.time() - t0, 2),
  }
  logging.info("Split: %s", json.dumps(summary))
  mesh = sharding.make_mesh(config.train.num_devices)
  summary["preview"] = preview_augmentations(config, split, mesh,
                                             os.path.join(workdir, "preview"))
  logging.info("Augmented views written to %s", summary["preview"]["picture"])
  if config.stop_after == "data":
    return _finish(workdir, summary, ["data"], "stop_after='data'")
  t1 = time.time()
  result = stage1.train(config, split, workdir, mesh)
  summary["stage1"] = {"steps": result.steps, "probe_knn_auroc": result.probe_auroc,
                       "views_per_second": result.views_per_second,
                       "seconds": round(time.time() - t1, 1)}
  logging.info("Stage 1: %s", json.dumps(summary["stage1"]))
  return _finish(workdir, summary, ["data", "stage1"], "stage 2 and evaluation are not "
                 "implemented yet; the only score is the stage-1 k-NN health probe")


def _finish(workdir: str, summary: dict[str, Any], stages: list[str],
            why: str) -> dict[str, Any]:
  summary["stages_run"] = stages
  summary["not_run"] = [s for s in ("data", "stage1", "stage2", "evaluation") if s not in stages]
  with open(os.path.join(workdir, "run_summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  logging.warning("Stopped after %s: %s. Summary: %s", stages[-1], why,
                  os.path.join(workdir, "run_summary.json"))
  return summary
