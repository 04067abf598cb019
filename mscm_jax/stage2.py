"""Stage 2: deviation maps of the frozen stage-1 model and the anomaly distance detector.

Per scale s the detector input is the map D_s(h, w) = 1 - cos(f_s(h, w), r_s(h, w))
between a feature and the prototype retrieved for it (or ||f - r||^2, or f - r itself,
or several of these: `stage2.inputs="cosine_distance+difference"` gives each scale one
detector per kind); the map's spatial mean is the training-free `deviation` score. A
small bias-free CNN per detector maps its input to phi, trained in the Deep SVDD form
(one-class) or Deep SAD form (unbalanced) towards a centre c fixed from the initial mean
(method.md section 3). All detectors train in one separately jitted, sharded step; the state
is checkpointed in `workdir/stage2/` by the loop stage 1 uses. A random
`holdout_fraction` of the normal training images is kept out of the fit and sets each
detector's score spread, so the scores can be summed.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from mscm_jax import frozen, losses, stage1
from mscm_jax.runtime import checkpoints, distributed, loop, sharding
from mscm_jax import config as config_lib
from mscm_jax.data import device, protocols
from mscm_jax.errors import CheckpointError, ConfigError, UserError
from mscm_jax.models import conv
from mscm_jax.models.detector import DistanceDetector, deviation_input

STAGE = "stage2"
EXTRAS = "scoring.npz"  # in workdir/stage2/: `Stage2Result.bank` and `.detector_spread`
_CENTER_EPS = 0.1  # Deep SVDD: centre coordinates this close to 0 are pushed out to +-eps


# ------------------------------------------------------------------ detector names


def detector_scales(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  return tuple(config.stage2.scales or config.memory.scales)


def detector_inputs(scales: Sequence[str], deviation: str) -> dict[str, tuple[str, str]]:
  """{detector name: (scale, input kind)}: one detector per scale and `+`-joined kind.

  A single kind names each detector by its scale alone, as before kinds could be joined.
  """
  kinds = deviation.split("+")
  if len(kinds) == 1:
    return {s: (s, kinds[0]) for s in scales}
  return {f"{s}_{k}": (s, k) for s in scales for k in kinds}


def detectors(config: ml_collections.ConfigDict) -> dict[str, tuple[str, str]]:
  return detector_inputs(detector_scales(config), config.stage2.inputs)


def detector_weights(config: ml_collections.ConfigDict) -> dict[str, float]:
  """w_s of each detector's scale (stage2.weights, one per stage-2 scale; default 1)."""
  scales = detector_scales(config)
  weights = tuple(config.stage2.weights) or (1.0,) * len(scales)
  by_scale = dict(zip(scales, (float(w) for w in weights), strict=True))
  return {name: by_scale[s] for name, (s, _) in detectors(config).items()}


def deviation_weights(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Equal weights over the scales of the training-free score (measured: its best scale
  is not always one the detector does best on, so the two sets are separate fields)."""
  return {s: 1.0 for s in (config.stage2.deviation_scales or detector_scales(config))}


# ------------------------------------------------------------------ detector state


@flax.struct.dataclass
class DetectorState:
  """The stage-2 pytree orbax saves: one detector and one fixed centre per detector name
  (the scale, or scale_kind when stage2.inputs joins several kinds)."""

  step: jax.Array  # int32 scalar
  params: Any  # {detector: params}
  centers: Any  # {detector: [out_dim]}, fixed after init
  input_scale: Any  # {detector: scalar}: inputs are divided by their std on normal fit data
  opt_state: Any
  rng: jax.Array  # uint32[2]


def build_detector(config: ml_collections.ConfigDict) -> DistanceDetector:
  s2 = config.stage2
  return DistanceDetector(widths=tuple(s2.widths), out_dim=s2.out_dim,
                          classifier=bool(s2.classifier and config.setting == "unbalanced"))


def num_steps(config: ml_collections.ConfigDict, n_fit: int) -> tuple[int, int]:
  per_epoch = max(1, -(-n_fit // config.stage2.batch_size))
  return max(1, round(config.stage2.epochs * per_epoch)), per_epoch


def build_optimizer(config: ml_collections.ConfigDict, total: int):
  s2 = config.stage2
  schedule = optax.cosine_decay_schedule(s2.learning_rate, total)
  return optax.adamw(schedule, weight_decay=s2.weight_decay), schedule


def holdout_rows(is_anomaly: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Bool [N]: the normal training rows kept out of the fit (seeded, at least 1 if > 0)."""
  normal = np.flatnonzero(~np.asarray(is_anomaly, bool))
  n_hold = int(round(fraction * len(normal)))
  if fraction > 0:
    n_hold = min(max(n_hold, 1), len(normal) - 1)
  chosen = np.random.default_rng([seed, 2]).choice(normal, n_hold, replace=False)
  mask = np.zeros(len(is_anomaly), bool)
  mask[chosen] = True
  return mask


def phi(detector: DistanceDetector, params: dict[str, Any], maps: dict[str, jax.Array],
        input_scale: dict[str, Any]):
  """Each detector's outputs on its inputs, divided by that detector's input std.

  The network is bias-free, so the division only rescales phi; it puts every detector's
  distances near 1 at the start, where Deep SAD's eta / d term is well conditioned
  (without it the labelled anomalies' term dominated and inflated all distances).
  """
  return {s: detector.apply({"params": params[s]}, m / input_scale[s]) for s, m in maps.items()}


def _fresh_params(config: ml_collections.ConfigDict, detector: DistanceDetector,
                  normal_maps: dict[str, np.ndarray]) -> dict[str, Any]:
  """Initial parameters and input scales of each detector (before its centre is known)."""
  rng = jax.random.PRNGKey(config.seed)
  params = {s: detector.init(jax.random.fold_in(rng, 10 + i), m[:1])["params"]
            for i, (s, m) in enumerate(sorted(normal_maps.items()))}
  input_scale = {s: np.float32(max(float(np.std(m)), 1e-6)) for s, m in normal_maps.items()}
  return {"params": params, "input_scale": input_scale}


def _phi_fn(detector: DistanceDetector) -> Callable:
  """(fresh params, maps) -> {detector: phi}: what the initial centres are the mean of."""
  return lambda fresh, m: {s: o["phi"] for s, o in phi(detector, fresh["params"], m,
                                                         fresh["input_scale"]).items()}


def _new_state(config: ml_collections.ConfigDict, tx, fresh: dict[str, Any],
               outs: dict[str, np.ndarray]) -> DetectorState:
  """c_s = mean phi_s of the normal fit maps under the initial weights, pushed away
  from 0 (`_CENTER_EPS`)."""
  centers = {}
  for s, v in outs.items():
    c = v.mean(axis=0)
    c = np.where(np.abs(c) < _CENTER_EPS, np.where(c < 0, -_CENTER_EPS, _CENTER_EPS), c)
    centers[s] = jnp.asarray(c, jnp.float32)
  params = fresh["params"]
  return DetectorState(step=jnp.zeros((), jnp.int32), params=params, centers=centers,
                       input_scale={s: jnp.asarray(v) for s, v in fresh["input_scale"].items()},
                       opt_state=tx.init(params), rng=jax.random.PRNGKey(config.seed))


def init_members(configs: Sequence[ml_collections.ConfigDict], detector: DistanceDetector,
                 tx, normal_maps: list[dict[str, np.ndarray]], mesh) -> DetectorState:
  """Fresh detectors of K members, stacked over `model`; c_s = mean phi_s of each
  member's normal fit maps under its initial weights, all K in one program."""
  fresh = [_fresh_params(c, detector, m) for c, m in zip(configs, normal_maps, strict=True)]
  batch = min(configs[0].frozen.batch_size,
              max(len(next(iter(m.values()))) for m in normal_maps))
  outs = device.map_members(_phi_fn(detector), sharding.stack(fresh, mesh), normal_maps,
                            batch, mesh, len(configs))
  return sharding.stack([_new_state(c, tx, f, o)
                         for c, f, o in zip(configs, fresh, outs, strict=True)], mesh)


def make_step_body(config: ml_collections.ConfigDict, detector: DistanceDetector, tx,
                   schedule, n_fit: int, mesh) -> Callable:
  """One member's step over every detector (their parameters are disjoint), unjitted:
  `make_train_step` maps it over K members."""
  s2 = config.stage2
  batch_size = s2.batch_size
  unbalanced = config.setting == "unbalanced" or s2.rotated_anomalies
  data_spec = sharding.data_sharding(mesh)

  def step_fn(state: DetectorState, maps: dict[str, jax.Array], is_anomaly: jax.Array):
    idx = device.sample_indices(jax.random.fold_in(state.rng, 0), state.step, n_fit,
                                batch_size)
    batch = {s: jax.lax.with_sharding_constraint(m[idx], data_spec) for s, m in maps.items()}
    flags = jax.lax.with_sharding_constraint(is_anomaly[idx], data_spec)
    chex.assert_shape(flags, (batch_size,))

    def loss_fn(params):
      terms = {}
      for s, out in phi(detector, params, batch, state.input_scale).items():
        if unbalanced:
          terms[f"sad_{s}"] = losses.deep_sad(out["phi"], state.centers[s], flags, s2.eta)
        else:
          terms[f"svdd_{s}"] = losses.deep_svdd(out["phi"], state.centers[s])
        if "logit" in out:
          terms[f"bce_{s}"] = jnp.mean(optax.sigmoid_binary_cross_entropy(
              out["logit"], flags.astype(jnp.float32)))
      total = sum((v * (s2.bce_weight if k.startswith("bce_") else 1.0)
                   for k, v in terms.items()), jnp.zeros((), jnp.float32))
      return total, terms

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        opt_state=opt_state)
    return new, {"loss": loss, **terms, "grad_norm": optax.global_norm(grads),
                 "learning_rate": schedule(state.step)}

  return step_fn


def make_train_step(config: ml_collections.ConfigDict, detector: DistanceDetector, tx,
                    schedule, n_fit: int, mesh) -> Callable:
  """One jitted step of K stacked members (a single run is K = 1): `make_step_body` over
  the member axis of states and fit sets [K, N, ...] (`sharding.over_members`, by
  `stack.within_group`); states split over `model` and donated, each member's batch over
  `data`."""
  return sharding.jit_members_step(
      lambda m: make_step_body(config, detector, tx, schedule, n_fit, m), mesh,
      config.stack.within_group, conv.compiler_options())


@functools.lru_cache(maxsize=16)
def _distance_fn(detector: DistanceDetector) -> Callable:
  """One function per detector: compiled once per batch shape, whichever state it reads."""

  def fn(state: DetectorState, maps):
    return {s: losses.svdd_distance(o["phi"], state.centers[s])
            for s, o in phi(detector, state.params, maps, state.input_scale).items()}

  return fn


@functools.lru_cache(maxsize=16)
def _logit_fn(detector: DistanceDetector) -> Callable:
  def fn(state: DetectorState, maps):
    return {s: o["logit"]
            for s, o in phi(detector, state.params, maps, state.input_scale).items()}

  return fn


def distances(detector: DistanceDetector, state: DetectorState,
              maps: dict[str, np.ndarray], batch_size: int = 500) -> dict[str, np.ndarray]:
  """{detector: ||phi - c||^2 per image}: each detector's score, float64."""
  states, mesh = sharding.as_one_member(state)
  return distances_members(detector, states, [maps], mesh, batch_size)[0]


def distances_members(detector: DistanceDetector, states: DetectorState,
                      maps: list[dict[str, np.ndarray]], mesh, batch_size: int = 500
                      ) -> list[dict[str, np.ndarray]]:
  """`distances` of K stacked detector states, each on its own maps, as one program."""
  return _map_members(_distance_fn(detector), states, maps, mesh, batch_size)


def logits_members(detector: DistanceDetector, states: DetectorState,
                   maps: list[dict[str, np.ndarray]], mesh, batch_size: int = 500
                   ) -> list[dict[str, np.ndarray]]:
  """{detector: the classifier head's anomaly logit per image} of K stacked detector
  states (a detector built with `classifier`: stage2.classifier, unbalanced setting)."""
  return _map_members(_logit_fn(detector), states, maps, mesh, batch_size)


def _map_members(fn: Callable, states: DetectorState, maps: list[dict[str, np.ndarray]],
                 mesh, batch_size: int) -> list[dict[str, np.ndarray]]:
  n = max(len(next(iter(m.values()))) for m in maps)
  out = device.map_members(fn, states, maps, min(batch_size, n), mesh, len(maps))
  return [{s: v.astype(np.float64) for s, v in o.items()} for o in out]


def spread(values: dict[str, np.ndarray]) -> dict[str, list[float]]:
  """{name: [mean, std]} of scores on normal data: what each score is divided by. One row
  has no spread: its std is taken as 1, not 0 (which would blow the score up)."""
  return {s: [float(np.mean(v)), float(max(np.std(v), 1e-12)) if len(v) > 1 else 1.0]
          for s, v in values.items()}


def combine(per_scale: dict[str, np.ndarray], norm: dict[str, Sequence[float]],
            weights: dict[str, float]) -> np.ndarray:
  """sum_s w_s (score_s - mean_s) / std_s over the weighted scales."""
  return sum(w * (per_scale[s] - norm[s][0]) / norm[s][1] for s, w in weights.items())


# ------------------------------------------------------------------------------ train


@dataclasses.dataclass
class FitResult:
  state: DetectorState
  detector: DistanceDetector
  steps: int
  rate: float | None  # maps per second
  norm: dict[str, list[float]]  # {detector: [mean, std]} of its distance on `reference`
  reference: np.ndarray  # bool [N]: the rows that set the spread (the holdout)
  n_fit: int
  start: int = 0  # the step this call began from (`loop.MembersResult.start`)
  reference_distances: dict[str, np.ndarray] | None = None  # {detector: [R]} behind `norm`


def nan_advice(config: ml_collections.ConfigDict):
  s2 = config.stage2

  def advice(terms: list[str]) -> str:
    if any(t.startswith("sad_") for t in terms):
      return (f"lower stage2.eta (now {s2.eta}: labelled anomalies' eta / distance term) or "
              f"stage2.learning_rate (now {s2.learning_rate})")
    return (f"lower stage2.learning_rate (now {s2.learning_rate}); a detector input that is "
            "NaN/Inf comes from a diverged stage 1")

  return advice


def _fit_rows(config: ml_collections.ConfigDict, is_anomaly: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Bool [N] each: the holdout (sets the spread), the fit rows, the normal fit rows."""
  hold = holdout_rows(is_anomaly, config.stage2.holdout_fraction, config.seed)
  return hold, ~hold, ~hold & ~is_anomaly


def _reference_rows(config: ml_collections.ConfigDict, is_anomaly: np.ndarray) -> np.ndarray:
  """Bool [N]: the rows whose distances set the detectors' spreads: the holdout, or the
  normal fit rows when there is none."""
  hold, _, normal = _fit_rows(config, np.asarray(is_anomaly, bool))
  return hold if hold.any() else normal


def rotated_fit_images(config: ml_collections.ConfigDict, images: np.ndarray,
                       is_anomaly: np.ndarray) -> np.ndarray:
  """[M, H, W, C]: the normal fit images (never the holdout, whose distances set the
  spread) each rotated by a seeded k * 90 degrees, 0 < k < `shift.rotations`: the shifted
  distribution that `stage2.rotated_anomalies` labels anomalous (method.md section 8)."""
  _, _, fit_normal = _fit_rows(config, np.asarray(is_anomaly, bool))
  rows = np.flatnonzero(fit_normal)
  turns = np.random.default_rng([config.seed, 3]).integers(1, config.shift.rotations,
                                                           len(rows))
  out = np.empty((len(rows),) + images.shape[1:], images.dtype)
  for k in range(1, config.shift.rotations):
    out[turns == k] = np.rot90(images[rows[turns == k]], k, axes=(1, 2))
  return out


def with_anomalies(inputs: dict[str, np.ndarray], is_anomaly: np.ndarray,
                   extra: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """`inputs` and their flags with the rows of `extra` appended as anomalies. Appended
  anomalies leave `holdout_rows` unchanged: it draws from the normal rows only."""
  n = len(next(iter(extra.values())))
  return ({s: np.concatenate([m, extra[s]]) for s, m in inputs.items()},
          np.concatenate([np.asarray(is_anomaly, bool), np.ones(n, bool)]))


def fit(config: ml_collections.ConfigDict, inputs: dict[str, np.ndarray],
        is_anomaly: np.ndarray, workdir: str, mesh, *,
        stop_after: int | None = None) -> FitResult:
  """`fit_members` of one model: the stage-2 fit for experiments on cached inputs."""
  return fit_members([config], [inputs], [is_anomaly], [workdir], mesh,
                     stop_after=stop_after)[0]


def fit_members(configs: Sequence[ml_collections.ConfigDict],
                inputs: list[dict[str, np.ndarray]], is_anomaly: list[np.ndarray],
                workdirs: list[str], mesh, *, stop_after: int | None = None
                ) -> list[FitResult]:
  """Trains (or resumes, or loads) the detectors of K members (configs differing in seed
  and classes only, fit sets of one size) on their `inputs` ({detector: [N, h, w, c]}) as
  one program; a single run is K = 1. States are stacked over `model`, each member's
  batch split over `data`, each member resumed from and saved to its own
  `workdir/stage2/` (`loop.run_members`). Results match K = 1 fits within float rounding
  (tests/test_stacked.py).

  A seeded `holdout_fraction` of each member's normal rows is kept out; the distances on
  it set each detector's spread.
  """
  mesh = sharding.member_mesh(mesh)
  config, k = configs[0], len(configs)
  s2 = config.stage2
  config_lib.validate(config, sharding.data_axis_size(mesh))
  flags = [np.asarray(f, bool) for f in is_anomaly]
  rows = [_fit_rows(c, f) for c, f in zip(configs, flags, strict=True)]
  sizes = sorted({int(fit_rows.sum()) for _, fit_rows, _ in rows})
  if len(sizes) != 1:
    raise ConfigError(f"detectors trained as one program need fit sets of one size, got "
                      f"{sizes} rows: train these classes separately")
  n_fit = sizes[0]
  detector = build_detector(config)
  total, per_epoch = num_steps(config, n_fit)
  tx, schedule = build_optimizer(config, total)
  members = loop.Stacked(workdirs, mesh)
  state = init_members(configs, detector, tx,
                       [{s: m[normal] for s, m in x.items()}
                        for x, (_, _, normal) in zip(inputs, rows, strict=True)], mesh)
  fit_maps = {s: device.stack_rows([x[s][fit_rows] for x, (_, fit_rows, _)
                                    in zip(inputs, rows, strict=True)], mesh)
              for s in inputs[0]}
  fit_flags = device.stack_rows([f[fit_rows] for f, (_, fit_rows, _)
                                 in zip(flags, rows, strict=True)], mesh)
  step_fn = make_train_step(config, detector, tx, schedule, n_fit, mesh)
  res = loop.run_members(STAGE, members, state, lambda st: step_fn(st, fit_maps, fit_flags),
                         total=total, log_every=s2.log_every_steps,
                         checkpoint_every=s2.checkpoint_every_steps,
                         items_per_step=s2.batch_size * k, steps_per_epoch=per_epoch,
                         stop_after=stop_after, unit="maps", advice=nan_advice(config))
  refs = [_reference_rows(c, f) for c, f in zip(configs, flags, strict=True)]
  norms = distances_members(detector, res.state,
                            [{s: m[ref] for s, m in x.items()}
                             for x, ref in zip(inputs, refs, strict=True)],
                            mesh, config.frozen.batch_size)
  return [FitResult(state, detector, res.step,
                    res.rate if finished is None else finished.get("maps_per_second"),
                    spread(norm), ref, n_fit, res.start, norm)
          for state, finished, norm, ref in zip(members.split(res.state), res.finished, norms,
                                                refs, strict=True)]


@dataclasses.dataclass
class Stage2Result:
  state: DetectorState
  detector: DistanceDetector
  steps: int
  norm: dict[str, dict[str, list[float]]]  # {'mscm': {detector: [mean, std]}, 'deviation'}
  seconds: float
  resumed_from: int = 0  # as `stage1.Stage1Result.resumed_from`
  # float32 [R, N, D]: the frozen embedding of the normal training images turned by each
  # of the R = shift.rotations quarter-turns, the bank that `knn` and `knn_rot` read
  bank: np.ndarray | None = None
  # [mean, std] of the combined detectors (`scoring`'s `detector`) on the holdout: the
  # unit `mscm` adds other scores in
  detector_spread: list[float] | None = None


def train(config: ml_collections.ConfigDict, split: protocols.ADSplit, workdir: str, mesh,
          s1: stage1.Stage1Result, *, stop_after: int | None = None) -> Stage2Result:
  """`train_members` of one model: stage 2 in `workdir/stage2/`."""
  return train_members([config], [split], [workdir], mesh, [s1], stop_after=stop_after)[0]


def train_members(configs: Sequence[ml_collections.ConfigDict],
                  splits: Sequence[protocols.ADSplit], workdirs: list[str], mesh,
                  s1s: Sequence[stage1.Stage1Result], *,
                  stop_after: int | None = None) -> list[Stage2Result]:
  """Trains (or resumes, or loads the finished) stage 2 of K members as one program (a
  single run is K = 1): the frozen stage 1's detector inputs of their training images
  (`frozen.read_members`), then `fit_members`. Members whose stage 2 is finished are
  loaded; the others train together."""
  t_start = time.time()
  mesh = sharding.member_mesh(mesh)
  apart = loop.finished_apart(
      STAGE, workdirs, lambda i: train(configs[i], splits[i], workdirs[i], mesh, s1s[i]),
      lambda rest: train_members([configs[i] for i in rest], [splits[i] for i in rest],
                                 [workdirs[i] for i in rest], mesh, [s1s[i] for i in rest],
                                 stop_after=stop_after))
  if apart is not None:
    return apart
  loaded = _load_all(configs, splits, workdirs, mesh, s1s)
  if loaded is not None:
    return loaded
  if len(configs) > 1 and len({stage1.stack_key(c) for c in configs}) != 1:
    raise UserError("configs trained as one program may differ only in seed, "
                    "dataset.normal_class and anomaly_classes")
  config, k = configs[0], len(configs)
  inputs = detectors(config)
  logging.info("Stage 2%s: detector inputs %s", f" of {k} members" if k > 1 else "",
               ", ".join(f"{s} {kind}" for s, kind in inputs.values()))
  variables = frozen.stack_variables([s.state for s in s1s], mesh)
  reads = _read(config, [s.train_images for s in splits], variables, mesh)
  fit_sets = [(r["inputs"], s.train_is_anomaly) for r, s in zip(reads, splits, strict=True)]
  if config.stage2.rotated_anomalies:
    rotated = [rotated_fit_images(c, s.train_images, s.train_is_anomaly)
               for c, s in zip(configs, splits, strict=True)]
    logging.info("Stage 2: %d rotated normal images as labelled anomalies%s",
                 len(rotated[0]), " per member" if k > 1 else "")
    extra = _read(config, rotated, variables, mesh)
    fit_sets = [with_anomalies(x, f, e["inputs"])
                for (x, f), e in zip(fit_sets, extra, strict=True)]
  fits = fit_members(configs, [x for x, _ in fit_sets], [f for _, f in fit_sets], workdirs,
                     mesh, stop_after=stop_after)
  extras = scoring_extras(configs, splits, variables, reads,
                          [f.reference_distances for f in fits], [f.norm for f in fits], mesh)
  return [_finish(c, split, w, read, res, extra, t_start)
          for c, split, w, read, res, extra in zip(configs, splits, workdirs, reads, fits,
                                                   extras, strict=True)]


def detector_states(results: Sequence[FitResult | Stage2Result], mesh) -> DetectorState:
  """The K members' detector states stacked over `model`: what the distances read
  (parameters, centres, input scales), not the optimiser."""
  return sharding.stack([r.state.replace(opt_state=None) for r in results], mesh)


def _read(config: ml_collections.ConfigDict, images: list[np.ndarray], variables: Any,
          mesh) -> list[dict[str, Any]]:
  """The frozen read (`frozen.read_members`) of each member's `images`: what the
  detectors take in, and the embedding."""
  return frozen.read_members(frozen.frozen_model(config), variables, images,
                             tuple(config.memory.scales), mesh, len(images),
                             kind=config.stage2.inputs, inputs=detectors(config),
                             batch_size=config.frozen.batch_size)


def scoring_extras(configs: Sequence[ml_collections.ConfigDict],
                   splits: Sequence[protocols.ADSplit], variables: Any,
                   reads: Sequence[dict[str, Any]], distances: Sequence[dict[str, np.ndarray]],
                   norms: Sequence[dict[str, list[float]]], mesh
                   ) -> list[tuple[np.ndarray, list[float]]]:
  """Per member, what the scores need beyond the detectors: (`Stage2Result.bank`,
  `Stage2Result.detector_spread`), from the frozen reads of its training images (`reads`,
  `_read`), the detectors' distances on the reference rows (`distances`) and
  their spreads (`norms`); the turned bank from the stacked frozen stage 1 (`variables`)."""
  config, k = configs[0], len(configs)
  normals = [~s.train_is_anomaly for s in splits]
  banks = [r["embedding"][n][None] for r, n in zip(reads, normals, strict=True)]
  if config.shift.rotations > 1:
    turned = frozen.embed_turned(frozen.frozen_model(config), variables,
                                 [s.train_images[n] for s, n in zip(splits, normals)],
                                 range(1, config.shift.rotations), mesh, k,
                                 config.frozen.batch_size)
    banks = [np.concatenate([b, t]) for b, t in zip(banks, turned, strict=True)]
  spreads = [spread({"d": combine(p, n, detector_weights(c))})["d"]
             for p, n, c in zip(distances, norms, configs, strict=True)]
  return list(zip(banks, spreads, strict=True))


def _save_extras(workdir: str, bank: np.ndarray, detector_spread: list[float]) -> None:
  if distributed.is_writer():
    path = os.path.join(workdir, STAGE, EXTRAS)
    with open(path + ".tmp", "wb") as f:  # atomic, as the checkpoints
      np.savez(f, bank=bank, detector_spread=np.asarray(detector_spread))
    os.replace(path + ".tmp", path)


def _load_all(configs, splits, workdirs, mesh, s1s) -> list[Stage2Result] | None:
  """Every member's finished stage 2, loaded without reading any image; None when one is
  unfinished, or its final checkpoint is damaged (the training then resumes from the
  newest intact one). Missing `scoring_extras` (a stage 2 finished before they were kept)
  are made from the frozen stage 1 and saved."""
  if not all(checkpoints.finished_info(os.path.join(w, STAGE)) for w in workdirs):
    return None
  try:
    out = [load_finished(c, w, s.train_images.shape[1:], mesh)
           for c, s, w in zip(configs, splits, workdirs, strict=True)]
  except CheckpointError as e:
    logging.warning("%s", e)
    return None
  logging.info("Stage 2 already finished: loaded from %s",
               ", ".join(os.path.join(w, STAGE) for w in workdirs))
  missing = [r.bank is None for r in out]
  if any(missing):
    complete_extras(configs, splits, s1s, out, mesh)
    for r, w, m in zip(out, workdirs, missing, strict=True):
      if m:
        _save_extras(w, r.bank, r.detector_spread)
    distributed.sync("scoring extras saved")
  return out


def complete_extras(configs: Sequence[ml_collections.ConfigDict],
                    splits: Sequence[protocols.ADSplit], s1s: Sequence[stage1.Stage1Result],
                    results: Sequence[Stage2Result], mesh) -> None:
  """Sets the `scoring_extras` of finished stage-2 results that lack them (a stage 2
  finished before they were kept), from the frozen stage 1 and the training images."""
  if all(r.bank is not None for r in results):
    return
  config = configs[0]
  variables = frozen.stack_variables([s.state for s in s1s], mesh)
  reads = _read(config, [s.train_images for s in splits], variables, mesh)
  distances = distances_members(
      results[0].detector, detector_states(results, mesh),
      [{d: x[_reference_rows(c, s.train_is_anomaly)] for d, x in r["inputs"].items()}
       for c, s, r in zip(configs, splits, reads, strict=True)],
      mesh, config.frozen.batch_size)
  extras = scoring_extras(configs, splits, variables, reads, distances,
                          [r.norm["mscm"] for r in results], mesh)
  for r, (bank, detector_spread) in zip(results, extras, strict=True):
    if r.bank is None:
      r.bank, r.detector_spread = bank, detector_spread


def _finish(config: ml_collections.ConfigDict, split: protocols.ADSplit, workdir: str,
            read: dict[str, Any], res: FitResult, extras: tuple[np.ndarray, list[float]],
            t_start: float) -> Stage2Result:
  """The spreads of both scores; the `scoring_extras` and FINISHED.json once the schedule
  is complete."""
  norm = {"mscm": res.norm,
          # appended anomalies (`with_anomalies`) are never reference rows
          "deviation": spread({s: v[res.reference[:split.n_train]]
                               for s, v in read["deviation"].items()})}
  total, _ = num_steps(config, res.n_fit)
  if res.steps >= total:
    _save_extras(workdir, *extras)
    checkpoints.mark_finished(os.path.join(workdir, STAGE),
                              {"step": res.steps, "norm": norm, "n_fit": res.n_fit,
                               "n_holdout": int(holdout_rows(
                                   split.train_is_anomaly, config.stage2.holdout_fraction,
                                   config.seed).sum()),
                               "maps_per_second": res.rate})
  return Stage2Result(res.state, res.detector, res.steps, norm, time.time() - t_start,
                      res.start, *extras)


def load_finished(config: ml_collections.ConfigDict, workdir: str, image_shape: Sequence[int],
                  mesh, *, repair: bool = True) -> Stage2Result:
  """The finished stage-2 state of `workdir` without any data (the Python API's path,
  with `repair=False`: a damaged checkpoint is reported, never moved aside)."""
  info = checkpoints.finished_info(os.path.join(workdir, STAGE))
  if info is None:
    raise UserError(f"{workdir}/{STAGE} holds no finished stage 2: run the training first")
  detector = build_detector(config)
  model, inputs = frozen.frozen_model(config), detectors(config)

  def map_shapes(x):
    out = model.apply(model.init(jax.random.PRNGKey(0), x, train=False), x, train=False)
    return {name: deviation_input(out["features"][s], out["readout"][s], k)
            for name, (s, k) in inputs.items()}

  shapes = jax.eval_shape(map_shapes, jnp.zeros((1,) + tuple(image_shape), jnp.float32))
  dummy = {s: np.ones(v.shape, np.float32) for s, v in shapes.items()}
  total = info["step"]
  tx, _ = build_optimizer(config, total)
  mesh = sharding.member_mesh(mesh)
  template = sharding.unstack(init_members([config], detector, tx, [dummy], mesh), mesh, 1)[0]
  state = checkpoints.restore_final(os.path.join(workdir, STAGE), template, info["step"],
                                    repair=repair)
  extras = (None, None)
  path = os.path.join(workdir, STAGE, EXTRAS)
  if os.path.exists(path):
    with np.load(path) as f:
      extras = (f["bank"], [float(x) for x in f["detector_spread"]])
  return Stage2Result(state, detector, int(state.step), info["norm"], 0.0, int(state.step),
                      *extras)
