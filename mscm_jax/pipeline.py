"""One run in one workdir: data, stage 1, stage 2, evaluation, each resumable.

`run(config, workdir)` is what `python -m mscm_jax.main` calls; a notebook can call it
(or the pieces below) the same way.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from mscm_jax import distributed, evaluate, identity, sharding, stage1, stage2
from mscm_jax import config as config_lib
from mscm_jax import workdir as workdir_lib
from mscm_jax.data import augment, device, protocols, sources
from mscm_jax.scoring import Scorer


def load_split(config: ml_collections.ConfigDict) -> protocols.ADSplit:
  """Checks the classes the config names (no decoding yet), then decodes the dataset
  once and applies the config's protocol."""
  names = sources.class_names(config.dataset)
  protocols.config_classes(config, names, sources.train_class_counts(config.dataset, names))
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
  originals, v1, v2 = (distributed.to_host(a) for a in (augment.to_float(images), view1, view2))
  stack = np.concatenate([originals, v1, v2])
  path = os.path.join(out_dir, "augmented_views.png")
  if distributed.is_writer():
    os.makedirs(out_dir, exist_ok=True)
    grid = image_grid(stack, columns=n)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3),
                                 Image.Resampling.NEAREST).save(path)
  views = jnp.concatenate([view1, view2])
  return {
      "picture": path,
      "batch_shape": list(view1.shape),
      "batch_sharding": str(view1.sharding.spec),
      "views_min": float(views.min()),  # reductions: replicated, readable by every process
      "views_max": float(views.max()),
      "views_mean": float(views.mean()),
      "originals_mean": float(originals.mean()),
      "devices": n_dev,
  }


def run(config: ml_collections.ConfigDict, workdir: str, *,
        split: protocols.ADSplit | None = None, discard_stale: bool = False,
        stage1_from: str | None = None) -> dict[str, Any]:
  """Data, stage 1, stage 2, evaluation for `config` in `workdir`; returns results.json.

  Each stage is loaded when finished and resumed when partial, but only when the
  identity it recorded (the config fields it reads, its data, the stage it reads from;
  see `identity`) is this run's: otherwise the run refuses before anything in the
  workdir changes, or with `discard_stale` deletes the stale stages and the ones after
  them and trains them again. `stage1_from`: another workdir whose finished stage 1,
  of the same identity, is copied in. `split`: data given directly (the API's arrays)
  instead of `config.dataset`; with no test images the run stops after stage 2. A
  rerun whose results.json has this run's identity returns without training.
  """
  config_lib.validate(config)
  workdir = workdir_lib.prepare(workdir)
  # A config that differs from a recorded stage is refused before any data is decoded.
  workdir_lib.check(workdir, identity.plan(config), discard_stale=discard_stale,
                    config_only=True)
  mesh = sharding.make_mesh(config.train.num_devices)
  config_lib.validate(config, mesh.devices.size)
  seconds: dict[str, float] = {}
  t = time.time()
  dataset = config.dataset.name if split is None else "arrays"
  split = load_split(config) if split is None else split
  plan = identity.plan(config, split)
  stale = workdir_lib.check(workdir, plan, discard_stale=discard_stale)
  source = (workdir_lib.check_stage1_source(stage1_from, plan["stage1"])
            if stage1_from else None)
  # ---- every check has passed: from here on the workdir changes (process 0 changes it;
  # the barriers keep the others from reading it half-changed).
  distributed.sync("workdir checked")
  writer = distributed.is_writer()
  if stale and writer:
    workdir_lib.discard(workdir, stale)
  if source and writer:
    workdir_lib.copy_stage1(source, workdir)
  done = workdir_lib.finished_results(workdir, plan["evaluation"])
  if done is not None and not config.stop_after:
    logging.info("All stages finished earlier with this identity: %s",
                 os.path.join(workdir, "results.json"))
    if writer:
      print(evaluate.summary_table(done), flush=True)
    return done
  if writer:
    if done is None:
      workdir_lib.discard_results(workdir)  # made by another evaluation identity, or partial
    workdir_lib.write_json(os.path.join(workdir, "config.json"),
                           json.loads(config.to_json_best_effort()))
  distributed.sync("workdir ready")
  summary: dict[str, Any] = {"dataset": dataset, "setting": config.setting,
                             "seed": config.seed, **split.summary()}
  logging.info("Split: %s", json.dumps(summary))
  # Also for a finished stage 1: results.json then reads the same however often the
  # run was interrupted (the copy and the preview take well under a second).
  data = device.put_on_device(split.train_images, split.train_is_anomaly, mesh)
  summary["preview"] = preview_augmentations(config, data, mesh,
                                             os.path.join(workdir, "preview"))
  logging.info("Augmented views written to %s", summary["preview"]["picture"])
  seconds["data"] = time.time() - t
  if config.stop_after == "data":
    return _finish(workdir, summary, seconds, "data")

  t = time.time()
  _record(workdir, plan["stage1"])
  s1 = stage1.train(config, split, workdir, mesh, data=data)
  del data
  seconds["stage1"] = time.time() - t
  summary["stage1"] = {"steps": s1.steps, "probe_knn_auroc": s1.probe_auroc,
                       "probe_untrained_knn_auroc": s1.probe_untrained_auroc,
                       "views_per_second": s1.views_per_second}
  logging.info("Stage 1: %s", json.dumps(summary["stage1"]))
  if config.stop_after == "stage1":
    return _finish(workdir, summary, seconds, "stage1")

  t = time.time()
  _record(workdir, plan["stage2"])
  s2 = stage2.train(config, split, workdir, mesh, s1)
  seconds["stage2"] = time.time() - t
  detectors = {name: list(v) for name, v in stage2.detectors(config).items()}
  summary["stage2"] = {"steps": s2.steps, "detectors": detectors,
                       "weights": stage2.detector_weights(config),
                       "deviation_scales": list(stage2.deviation_weights(config)),
                       "norm": s2.norm}
  if config.stop_after == "stage2" or split.n_test == 0:
    return _finish(workdir, summary, seconds, "stage2")

  t = time.time()
  logging.info("Evaluation: every score on the %d test images", split.n_test)
  out = evaluate.compute_scores(config, split, Scorer(config, s1, s2))
  summary["scores"] = evaluate.score_metrics(out["scores"], split.test_is_anomaly)
  if config.evaluate.report and writer:
    from mscm_jax import report  # pylint: disable=g-import-not-at-top
    paths = report.write_report(os.path.join(workdir, "report"), out["scores"],
                                split.test_is_anomaly, split.test_images, out["maps"],
                                rank_by="mscm")
    summary["report"] = sorted(os.path.relpath(p, workdir) for p in paths)
  seconds["evaluation"] = time.time() - t
  summary["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
  summary["identity"] = plan["evaluation"].fingerprint
  summary["identities"] = {k: v.fingerprint for k, v in plan.items()}
  if writer:
    evaluate.write_results(workdir, summary, out["scores"], split.test_is_anomaly)
    print(evaluate.summary_table(summary), flush=True)
  distributed.sync("results written")
  return summary


def _record(workdir: str, ident: identity.Identity) -> None:
  """The stage's identity, written before its first checkpoint (checked to match)."""
  if distributed.is_writer() and workdir_lib.recorded_identity(workdir, ident.stage) is None:
    workdir_lib.record_identity(workdir, ident)


def _finish(workdir: str, summary: dict[str, Any], seconds: dict[str, float],
            last: str) -> dict[str, Any]:
  stages = ["data", "stage1", "stage2", "evaluation"]
  summary["stages_run"] = stages[:stages.index(last) + 1]
  summary["not_run"] = stages[stages.index(last) + 1:]
  summary["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
  if distributed.is_writer():
    with open(os.path.join(workdir, "run_summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  distributed.sync("summary written")
  logging.warning("Stopped after %s (stop_after=%r). Summary: %s", last, last,
                  os.path.join(workdir, "run_summary.json"))
  return summary
