"""One run in one workdir: data, stage 1, stage 2, evaluation, each resumable.

`run(config, workdir)` is what `python -m mscm_jax.main` calls; a notebook can call it
(or the pieces below) the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from mscm_jax import checkpoints, evaluate, sharding, stage1, stage2
from mscm_jax import config as config_lib
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


def preview_augmentations(config: ml_collections.ConfigDict, data: device.DeviceDataset,
                          mesh: jax.sharding.Mesh, out_dir: str) -> dict[str, Any]:
  """Draws one training batch on device, augments it twice, saves a picture and stats.

  Rows of the picture: originals, view 1, view 2 (what stage 1 will contrast).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

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


def config_hash(config: ml_collections.ConfigDict) -> str:
  """Fingerprint of everything that decides the results (a rerun with it returns at once)."""
  return hashlib.sha256(config.to_json_best_effort(sort_keys=True).encode()).hexdigest()[:16]


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Data, stage 1, stage 2, evaluation for `config` in `workdir`; returns results.json.

  Each stage is loaded when finished and resumed when partial; a repeated command whose
  results.json matches the config returns at once. `config.stop_after` ends the run
  early (run_summary.json then says what was not run).
  """
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  fingerprint = config_hash(config)
  done = _finished_results(workdir, fingerprint)
  if done is not None and not config.stop_after:
    logging.info("All stages finished earlier with this config: %s",
                 os.path.join(workdir, "results.json"))
    print(evaluate.summary_table(done), flush=True)
    return done
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  seconds: dict[str, float] = {}
  t = time.time()
  split = load_split(config)
  summary: dict[str, Any] = {"dataset": config.dataset.name, "setting": config.setting,
                             "seed": config.seed, **split.summary()}
  logging.info("Split: %s", json.dumps(summary))
  mesh = sharding.make_mesh(config.train.num_devices)
  data = None
  if checkpoints.finished_info(os.path.join(workdir, stage1.STAGE)) is None:
    data = device.put_on_device(split.train_images, split.train_is_anomaly, mesh)
    summary["preview"] = preview_augmentations(config, data, mesh,
                                               os.path.join(workdir, "preview"))
    logging.info("Augmented views written to %s", summary["preview"]["picture"])
  seconds["data"] = time.time() - t
  if config.stop_after == "data":
    return _finish(workdir, summary, seconds, "data")

  t = time.time()
  s1 = stage1.train(config, split, workdir, mesh, data=data)
  del data
  seconds["stage1"] = time.time() - t
  summary["stage1"] = {"steps": s1.steps, "probe_knn_auroc": s1.probe_auroc,
                       "views_per_second": s1.views_per_second}
  logging.info("Stage 1: %s", json.dumps(summary["stage1"]))
  if config.stop_after == "stage1":
    return _finish(workdir, summary, seconds, "stage1")

  t = time.time()
  s2 = stage2.train(config, split, workdir, mesh, s1)
  seconds["stage2"] = time.time() - t
  detectors = {name: list(v) for name, v in stage2.detectors(config).items()}
  summary["stage2"] = {"steps": s2.steps, "detectors": detectors,
                       "weights": stage2.detector_weights(config),
                       "deviation_scales": list(stage2.deviation_weights(config)),
                       "norm": s2.norm}
  if config.stop_after == "stage2":
    return _finish(workdir, summary, seconds, "stage2")

  t = time.time()
  logging.info("Evaluation: every score on the %d test images", split.n_test)
  out = evaluate.compute_scores(config, split, s1, s2)
  summary["scores"] = evaluate.score_metrics(out["scores"], split.test_is_anomaly)
  if config.evaluate.report:
    from mscm_jax import report  # pylint: disable=g-import-not-at-top
    paths = report.write_report(os.path.join(workdir, "report"), out["scores"],
                                split.test_is_anomaly, split.test_images, out["maps"],
                                rank_by="mscm")
    summary["report"] = sorted(os.path.relpath(p, workdir) for p in paths)
  seconds["evaluation"] = time.time() - t
  summary["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
  summary["config_hash"] = fingerprint
  evaluate.write_results(workdir, summary, out["scores"], split.test_is_anomaly)
  print(evaluate.summary_table(summary), flush=True)
  return summary


def _finished_results(workdir: str, fingerprint: str) -> dict[str, Any] | None:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    results = json.load(f)
  return results if results.get("config_hash") == fingerprint else None


def _finish(workdir: str, summary: dict[str, Any], seconds: dict[str, float],
            last: str) -> dict[str, Any]:
  stages = ["data", "stage1", "stage2", "evaluation"]
  summary["stages_run"] = stages[:stages.index(last) + 1]
  summary["not_run"] = stages[stages.index(last) + 1:]
  summary["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
  with open(os.path.join(workdir, "run_summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  logging.warning("Stopped after %s (stop_after=%r). Summary: %s", last, last,
                  os.path.join(workdir, "run_summary.json"))
  return summary
