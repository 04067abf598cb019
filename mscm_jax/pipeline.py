"""One run in one workdir: data, stage 1, stage 2, evaluation, each resumable.

`run(config, workdir)` is what `python -m mscm_jax.main` calls; a notebook can call it
(or the pieces below) the same way.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from mscm_jax import evaluate, stage1, stage2
from mscm_jax.runtime import distributed, identity, sharding
from mscm_jax import config as config_lib
from mscm_jax.runtime import workdir as workdir_lib
from mscm_jax.data import augment, device, protocols, sources
from mscm_jax.errors import ConfigError, WorkdirError
from mscm_jax.names import PROBE_KEYS
from mscm_jax.scoring import MemberScorers, Scorer


def load_split(config: ml_collections.ConfigDict) -> protocols.ADSplit:
  """Checks the classes the config names (no decoding yet), then decodes the dataset
  once and applies the config's protocol."""
  names = sources.class_names(config.dataset)
  protocols.config_classes(config, names, *sources.split_counts(config.dataset, names))
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


def preview_augmentations(config: ml_collections.ConfigDict, train_images: np.ndarray,
                          mesh: jax.sharding.Mesh, out_dir: str) -> dict[str, Any]:
  """Draws one training batch, augments it twice on the devices, saves a picture and stats.

  Rows of the picture: originals, view 1, view 2 (what stage 1 will contrast). Only the
  batch goes to the devices.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  n_dev = mesh.devices.size
  n = max(n_dev, config.preview.num_images // n_dev * n_dev)
  key = jax.random.key(config.seed)
  idx = device.sample_indices(jax.random.fold_in(key, 0), jnp.int32(0), len(train_images), n)
  images = jax.device_put(train_images[np.asarray(idx)], sharding.data_sharding(mesh))
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
  if config.stack.classes:
    raise ConfigError("stack.classes trains several classes: call pipeline.run_classes "
                      "(main does)")
  workdir = workdir_lib.prepare(workdir, read_only_ok=True)
  if not workdir_lib.writable(workdir):  # a finished run on a read-only mount: show it
    return _run(config, workdir, split, discard_stale, stage1_from, read_only=True)
  with _locked([workdir]):
    return _run(config, workdir, split, discard_stale, stage1_from)


def _run(config, workdir, split, discard_stale, stage1_from,
         read_only: bool = False) -> dict[str, Any]:
  _warn_ignored(config)
  # A config that differs from a recorded stage is refused before any data is decoded.
  workdir_lib.check(workdir, identity.plan(config), discard_stale=discard_stale,
                    config_only=True)
  mesh = sharding.make_mesh(config.train.num_devices)
  config_lib.validate(config, mesh.devices.size)
  t = time.time()
  dataset = config.dataset.name if split is None else "arrays"
  split = load_split(config) if split is None else split
  _warn_clamped(config, split)
  r = _check(config, workdir, split, dataset, discard_stale, stage1_from)
  if read_only and (r.stale or r.source or config.stop_after or workdir_lib.finished_results(
      workdir, r.plan["evaluation"]) is None):
    raise WorkdirError(f"workdir {workdir} cannot be written (read-only) and holds no "
                       "finished results of this config to show: copy it somewhere writable")
  # ---- every check has passed: from here on the workdir changes (process 0 changes it;
  # the barriers keep the others from reading it half-changed).
  distributed.sync("workdir checked")
  if not _begin(r, mesh, t):
    return r.done
  if config.stop_after == "data":
    return _finish(workdir, r.summary, r.seconds, "data")
  _train_members([r], sharding.member_mesh(mesh))
  return r.done


def run_classes(config: ml_collections.ConfigDict, root: str, *,
                discard_stale: bool = False) -> dict[str, dict[str, Any]]:
  """`run` for each class of `stack.classes` ('all' or names / indices) as the normal
  class, in `root/<stack.workdir_name>/` (default `root/<class>/`), with their stage 1,
  stage 2 and evaluation each run as one program over a (model, data) mesh
  (`stage1.train_members`, `stage2.train_members`, `evaluate.compute_scores`).
  Each workdir reads as that class's own `run`, and is interchangeable with it (the
  identities are the same). Returns {class: results}."""
  config_lib.validate(config)
  root = workdir_lib.prepare(root)
  names = sources.class_names(config.dataset)
  chosen = (tuple(range(len(names))) if config.stack.classes == "all" else
            protocols.resolve_classes(config.stack.classes, names, "stack.classes"))
  configs = [class_config(config, names[k]) for k in chosen]
  workdirs = [workdir_lib.prepare(os.path.join(root, config_lib.stack_workdir(config, names[k])))
              for k in chosen]
  with _locked(workdirs):
    return _run_classes(config, names, chosen, configs, workdirs, discard_stale)


@contextlib.contextmanager
def _locked(workdirs: list[str]) -> Iterator[None]:
  """Every workdir's lock (`workdir.locked`), held by process 0 for the whole run."""
  with contextlib.ExitStack() as stack:
    if distributed.is_writer():
      for w in workdirs:
        stack.enter_context(workdir_lib.locked(w))
    yield


def _warn_ignored(config: ml_collections.ConfigDict) -> None:
  """One warning line for each field this run ignores (`config.ignored_fields`)."""
  for line in config_lib.ignored_fields(config):
    logging.warning("%s", line)


def _warn_clamped(config: ml_collections.ConfigDict, split: protocols.ADSplit) -> None:
  """A warning when the k-NN scores' k exceeds the normal training images (clamped)."""
  n_normal = int((~split.train_is_anomaly).sum())
  if config.evaluate.knn_k >= n_normal:
    logging.warning("evaluate.knn_k=%d is not below the %d normal training images: `knn` "
                    "uses k=%d (each training image's own spread leaves it out), "
                    "`pixel_knn` k=%d", config.evaluate.knn_k, n_normal, n_normal - 1,
                    min(config.evaluate.knn_k, n_normal))


def _run_classes(config, names, chosen, configs, workdirs, discard_stale
                 ) -> dict[str, dict[str, Any]]:
  _warn_ignored(config)  # the members differ in class and seed only: the same fields
  for c, w in zip(configs, workdirs, strict=True):
    workdir_lib.check(w, identity.plan(c), discard_stale=discard_stale, config_only=True)
  mesh = sharding.make_mesh(config.train.num_devices)
  config_lib.validate(config, mesh.devices.size)
  counts = sources.split_counts(config.dataset, names)
  for c in configs:
    protocols.config_classes(c, names, *counts)
  t = time.time()
  train, test = sources.load_splits(config.dataset)  # decoded once for every class
  runs = [_check(c, w, protocols.make_split(c, train, test), config.dataset.name,
                 discard_stale, None) for c, w in zip(configs, workdirs, strict=True)]
  for r in runs:
    _warn_clamped(r.config, r.split)
  distributed.sync("workdirs checked")
  todo = [r for r in runs if _begin(r, mesh, t)]
  if config.stop_after == "data":
    return {names[k]: _finish(r.workdir, r.summary, r.seconds, "data")
            for k, r in zip(chosen, runs, strict=True)}
  if todo:
    _train_members(todo, sharding.make_model_mesh(
        config.stack.model_axis or sharding.default_model_axis(mesh.devices.size, len(todo)),
        config.train.num_devices))
  return {names[k]: r.done for k, r in zip(chosen, runs, strict=True)}


def _train_members(todo: list[_Run], model_mesh) -> None:
  """Stage 1, stage 2 and the evaluation of the unfinished runs, each stage as one
  program over a (model, data) mesh (a single run: K = 1); sets each run's `done`."""
  t = time.time()
  for r in todo:
    _record(r.workdir, r.plan["stage1"])
  if len(todo) > 1:
    logging.info("Stage 1 of %d classes as one program on a %s mesh", len(todo),
                 dict(model_mesh.shape))
  s1s = stage1.train_members([r.config for r in todo], [r.split for r in todo],
                             [r.workdir for r in todo], model_mesh)
  elapsed = time.time() - t
  runs = []
  for r, s1 in zip(todo, s1s, strict=True):
    r.done = _stage1_done(r, s1, elapsed)
    if r.done is None:
      runs.append((r, s1))
  if not runs:
    return
  t = time.time()
  for r, _ in runs:
    _record(r.workdir, r.plan["stage2"])
  if len(runs) > 1:
    logging.info("Stage 2 of %d classes as one program", len(runs))
  s2s = stage2.train_members([r.config for r, _ in runs], [r.split for r, _ in runs],
                             [r.workdir for r, _ in runs], model_mesh,
                             [s1 for _, s1 in runs])
  elapsed = time.time() - t
  scorers = []
  for (r, s1), s2 in zip(runs, s2s, strict=True):
    r.done = _stage2_done(r, s2, elapsed)
    if r.done is None:
      scorers.append((r, Scorer(r.config, s1, s2)))
  if not scorers:
    return
  t = time.time()
  logging.info("Evaluation%s: every score on the %d test images",
               f" of {len(scorers)} classes as one program" if len(scorers) > 1 else "",
               scorers[0][0].split.n_test)
  outs = evaluate.compute_scores([r.config for r, _ in scorers], [r.split for r, _ in scorers],
                                 MemberScorers([s for _, s in scorers], model_mesh))
  for (r, _), out in zip(scorers, outs, strict=True):
    r.done = _evaluated(r, out, t)


def class_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The one-class run of `name` that `stack.classes` stands for."""
  c = copy.deepcopy(config)  # FieldReferences kept: any type may be set
  with c.unlocked():
    c.dataset.normal_class = name
    c.stack.classes = ()
  return c


@dataclasses.dataclass
class _Run:
  """One workdir's run between its stages."""

  config: ml_collections.ConfigDict
  workdir: str
  split: protocols.ADSplit
  dataset: str
  plan: dict[str, identity.Identity]
  stale: list[str]
  source: str | None
  summary: dict[str, Any] = dataclasses.field(default_factory=dict)
  seconds: dict[str, float] = dataclasses.field(default_factory=dict)
  done: dict[str, Any] | None = None


def _check(config, workdir, split, dataset, discard_stale, stage1_from) -> _Run:
  """Every check on the workdir against this run's identities; changes nothing."""
  plan = identity.plan(config, split)
  stale = workdir_lib.check(workdir, plan, discard_stale=discard_stale)
  source = (workdir_lib.check_stage1_source(stage1_from, plan["stage1"])
            if stage1_from else None)
  return _Run(config, workdir, split, dataset, plan, stale, source)


def _begin(r: _Run, mesh, t: float) -> bool:
  """The workdir made this run's (stale stages gone, config.json), then the preview of
  its data; False (and `r.done` set) when the results are already there."""
  writer = distributed.is_writer()
  if r.stale and writer:
    workdir_lib.discard(r.workdir, r.stale)
  if r.source and writer:
    workdir_lib.copy_stage1(r.source, r.workdir)
  done = workdir_lib.finished_results(r.workdir, r.plan["evaluation"])
  if done is not None and not r.config.stop_after:
    logging.info("All stages finished earlier with this identity: %s",
                 os.path.join(r.workdir, "results.json"))
    if writer:
      print(evaluate.summary_table(done), flush=True)
    r.done = done
    return False
  if writer:
    if done is None:
      workdir_lib.discard_results(r.workdir)  # made by another evaluation identity, or partial
    workdir_lib.write_json(os.path.join(r.workdir, "config.json"),
                           json.loads(r.config.to_json_best_effort()))
  distributed.sync("workdir ready")
  split, config = r.split, r.config
  r.summary.update({"dataset": r.dataset, "setting": config.setting, "seed": config.seed,
                    **split.summary()})
  logging.info("Split: %s", json.dumps(r.summary))
  # Also for a finished stage 1: results.json then reads the same however often the
  # run was interrupted (the preview takes well under a second).
  r.summary["preview"] = preview_augmentations(config, split.train_images, mesh,
                                               os.path.join(r.workdir, "preview"))
  logging.info("Augmented views written to %s", r.summary["preview"]["picture"])
  r.seconds["data"] = time.time() - t
  return True


def _stage1_done(r: _Run, s1: stage1.Stage1Result, seconds: float) -> dict[str, Any] | None:
  """Stage 1 in the summary; the run's end when it stops there."""
  r.seconds["stage1"] = seconds
  r.summary["stage1"] = {"steps": s1.steps,
                         PROBE_KEYS[0]: s1.probe_auroc,
                         PROBE_KEYS[1]: s1.probe_untrained_auroc,
                         "views_per_second": s1.views_per_second}
  # `seconds` are this process's: where it took each stage up says what they paid for.
  r.summary["resumed_from"] = {"stage1": s1.resumed_from}
  logging.info("Stage 1: %s", json.dumps(r.summary["stage1"]))
  if r.config.stop_after == "stage1":
    return _finish(r.workdir, r.summary, r.seconds, "stage1")
  return None


def _stage2_done(r: _Run, s2: stage2.Stage2Result, seconds: float) -> dict[str, Any] | None:
  """Stage 2 in the summary; the run's end when it stops there (or has no test images)."""
  config = r.config
  r.seconds["stage2"] = seconds
  r.summary["resumed_from"]["stage2"] = s2.resumed_from
  detectors = {name: list(v) for name, v in stage2.detectors(config).items()}
  r.summary["stage2"] = {"steps": s2.steps, "detectors": detectors,
                         "weights": stage2.detector_weights(config),
                         "deviation_scales": list(stage2.deviation_weights(config)),
                         "norm": s2.norm}
  if config.stop_after == "stage2":
    return _finish(r.workdir, r.summary, r.seconds, "stage2")
  if r.split.n_test == 0:  # the API's fit: the caller scores images of its own
    return _finish(r.workdir, r.summary, r.seconds, "stage2", why="no test images given")
  return None


def _evaluated(r: _Run, out: dict[str, Any], t: float) -> dict[str, Any]:
  """Metrics, report and results.json of one workdir from its scores (`out` of
  `evaluate.compute_scores`, whose clock started at `t`)."""
  config, split, workdir, summary = r.config, r.split, r.workdir, r.summary
  writer = distributed.is_writer()
  # Both splits' metrics, named apart: choices read `validation_scores`, the final
  # table `test_scores`.
  summary["validation_scores"] = (None if out["validation"] is None else
                                  evaluate.score_metrics(out["validation"],
                                                         split.val_is_anomaly))
  summary["test_scores"] = evaluate.score_metrics(out["scores"], split.test_is_anomaly)
  summary["per_anomaly_class"] = {
      "labelled": list(split.labelled_anomaly_classes),
      "auroc": evaluate.class_aurocs(out["scores"], split.test_classes, split.test_is_anomaly,
                                     split.class_names)}
  if config.evaluate.report and writer:
    from mscm_jax import report  # pylint: disable=g-import-not-at-top
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    paths = report.write_report(os.path.join(workdir, "report"), out["scores"],
                                split.test_is_anomaly, split.test_images, out["maps"],
                                rank_by="mscm",
                                metrics_path=metrics_path if os.path.exists(metrics_path) else None)
    summary["report"] = sorted(os.path.relpath(p, workdir) for p in paths)
  r.seconds["evaluation"] = time.time() - t
  summary["seconds"] = {k: round(v, 1) for k, v in r.seconds.items()}
  summary["identity"] = r.plan["evaluation"].fingerprint
  summary["identities"] = {k: v.fingerprint for k, v in r.plan.items()}
  if writer:
    evaluate.write_results(workdir, summary, out["scores"], split.test_is_anomaly,
                           split.test_classes, validation=out["validation"],
                           val_is_anomaly=split.val_is_anomaly, val_classes=split.val_classes)
    print(evaluate.summary_table(summary), flush=True)
  distributed.sync("results written")
  return summary


def _record(workdir: str, ident: identity.Identity) -> None:
  """The stage's identity, written before its first checkpoint (checked to match)."""
  if distributed.is_writer() and workdir_lib.recorded_identity(workdir, ident.stage) is None:
    workdir_lib.record_identity(workdir, ident)


def _finish(workdir: str, summary: dict[str, Any], seconds: dict[str, float],
            last: str, why: str = "") -> dict[str, Any]:
  stages = ["data", "stage1", "stage2", "evaluation"]
  summary["stages_run"] = stages[:stages.index(last) + 1]
  summary["not_run"] = stages[stages.index(last) + 1:]
  summary["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
  if distributed.is_writer():
    with open(os.path.join(workdir, "run_summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  distributed.sync("summary written")
  path = os.path.join(workdir, "run_summary.json")
  if why:
    logging.info("Trained up to %s (%s). Summary: %s", last, why, path)
  else:
    logging.warning("Stopped after %s (stop_after=%r). Summary: %s", last, last, path)
  return summary
