"""Stage 1: memory-augmented contrastive training of the encoder and its memories.

Reads top to bottom: model and optimiser from the config, the train state, the loss,
the sharded train step, the loop (checkpoints, NaN guard, metrics, SIGTERM), the
k-NN health probe. The loop trains K models as one program, a single run being K = 1:
their states are stacked over the `model` mesh axis and replicated over `data`; each
model's batch is drawn on device, sharded over `data`, augmented inside the step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from mscm_jax import frozen, knn, losses, metrics
from mscm_jax.runtime import checkpoints, distributed, loop, monitoring, sharding
from mscm_jax import config as config_lib
from mscm_jax.data import augment, device, protocols
from mscm_jax.errors import UserError
from mscm_jax.frozen import build_model
from mscm_jax.models import AnoMem, conv
from mscm_jax.names import PROBE_KEYS

STAGE = "stage1"


# ------------------------------------------------------------------- model, optimiser


def num_steps(config: ml_collections.ConfigDict, n_train: int) -> tuple[int, int]:
  """(total steps, steps per epoch) for `train.epochs` passes over the training set."""
  per_epoch = max(1, -(-n_train // config.train.batch_size))
  return max(1, round(config.train.epochs * per_epoch)), per_epoch


def views_per_step(config: ml_collections.ConfigDict) -> int:
  """Augmented views one step contrasts: two per image and rotation."""
  return 2 * config.shift.rotations * config.train.batch_size


def check_shape(config: ml_collections.ConfigDict, image_shape) -> None:
  """Rotations by 90 degrees need square images."""
  if config.shift.rotations > 1 and image_shape[0] != image_shape[1]:
    raise UserError(f"shift.rotations={config.shift.rotations} needs square images, got "
                    f"{tuple(image_shape[:2])}: resize them (dataset.image_size) or set "
                    "shift.rotations=1")


def learning_rate_schedule(config: ml_collections.ConfigDict, total: int,
                           per_epoch: int) -> optax.Schedule:
  """Linear warm-up then cosine decay; the peak scales linearly with the instances a step
  contrasts (per 256: images x shift.rotations)."""
  peak = config.optim.learning_rate * config.train.batch_size * config.shift.rotations / 256
  warmup = min(int(config.optim.warmup_epochs * per_epoch), total - 1)
  if warmup <= 0:  # the same values; optax logs a line about an empty warm-up otherwise
    return optax.cosine_decay_schedule(peak, total, alpha=0.0)
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, end_value=0.0)


def _decay_mask(params: Any) -> Any:
  # Weight decay and LARS trust ratios apply to kernels and prototypes, not to BN/LN or biases.
  return jax.tree.map(lambda p: p.ndim > 1, params)


def build_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule):
  o = config.optim
  if o.name == "lars":
    tx = optax.lars(schedule, weight_decay=o.weight_decay, weight_decay_mask=_decay_mask,
                    trust_ratio_mask=_decay_mask, momentum=o.momentum)
  elif o.name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(o.weight_decay, _decay_mask),
                     optax.sgd(schedule, momentum=o.momentum))
  else:
    tx = optax.adamw(schedule, weight_decay=o.weight_decay, mask=_decay_mask)
  return optax.chain(optax.clip_by_global_norm(o.clip_norm), tx) if o.clip_norm else tx


def memory_gate_schedule(config: ml_collections.ConfigDict,
                         per_epoch: int) -> optax.Schedule | None:
  """How far the memory has entered the encoder's path at a step (0 -> 1 over
  memory.path_warmup_epochs); None where it is fully there from the start."""
  steps = int(config.memory.path_warmup_epochs * per_epoch)
  if config.memory.mode == "branch" or steps <= 0:
    return None
  return optax.linear_schedule(0.0, 1.0, steps)


# ------------------------------------------------------------------------ train state


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; a pytree of arrays, so orbax saves it whole."""

  step: jax.Array  # int32 scalar
  params: Any  # encoder, memories (prototypes included), heads
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # uint32[2]: base key; step keys are folded from it, so resume is exact


def make_init_fn(model: AnoMem, tx, image_shape, mesh) -> Callable[[jax.Array], TrainState]:
  """Jitted seed -> fresh state, replicated over the mesh."""

  def make(rng):
    variables = model.init(jax.random.fold_in(rng, 2), jnp.zeros((2,) + tuple(image_shape)),
                           train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=tx.init(params), rng=rng)

  return jax.jit(make, out_shardings=sharding.replicated(mesh))


# ------------------------------------------------------------------------------- loss


def loss_terms(out: dict[str, Any], params: Any, is_anomaly: jax.Array,
               config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """Every term of the stage-1 objective, unweighted (method.md section 2)."""
  b = is_anomaly.shape[0]
  anomaly = is_anomaly if config.setting == "unbalanced" else None
  normal_rows = None if anomaly is None else ~jnp.concatenate([is_anomaly, is_anomaly])
  tau = config.loss.temperature
  terms = {"nt_xent": losses.nt_xent(out["projection"][:b], out["projection"][b:], tau,
                                     anomaly)}
  for scale, z in out.get("scale_projection", {}).items():
    terms[f"nt_xent_{scale}"] = losses.nt_xent(z[:b], z[b:], tau, anomaly)
  for scale in config.memory.scales:
    terms[f"variance_{scale}"] = losses.variance_hinge(params[f"memory_{scale}"]["prototypes"])
    f, r = out["features"][scale], out["readout"][scale]
    if config.memory.train == "codebook":
      terms[f"codebook_{scale}"] = losses.feature_alignment(f, r, normal_rows)
    elif config.loss.alignment_weight > 0:
      terms[f"alignment_{scale}"] = losses.feature_alignment(f, r, normal_rows)
  if config.loss.rotation_weight > 0:  # both views of each rotated image, `rotate`'s layout
    labels = augment.rotation_labels(b, config.shift.rotations)
    logits = out["rotation_logits"]
    terms["rotation"] = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.concatenate([labels, labels])))
  return terms


def term_weight(name: str, config: ml_collections.ConfigDict) -> float:
  """The weight of a term named by `loss_terms`."""
  if name == "nt_xent":
    return 1.0
  if name.startswith("nt_xent_"):
    return config.loss.scale_weight
  kind = name.split("_")[0]
  return {"variance": config.loss.variance_weight, "codebook": config.loss.codebook_weight,
          "alignment": config.loss.alignment_weight,
          "rotation": config.loss.rotation_weight}[kind]


def total_loss(terms: dict[str, jax.Array], config: ml_collections.ConfigDict) -> jax.Array:
  return sum((term_weight(k, config) * v for k, v in terms.items()), jnp.zeros((), jnp.float32))


def nan_advice(config: ml_collections.ConfigDict) -> Callable[[list[str]], str]:
  """What to change when these logged terms became NaN/Inf (the loop's message ends so)."""
  lr = f"optim.learning_rate (now {config.optim.learning_rate})"
  if not config.optim.clip_norm:
    lr += " or set optim.clip_norm (e.g. 5)"
  if config.memory.mode != "branch" and not config.memory.path_warmup_epochs:
    lr += ", or let the memory enter the path gradually (memory.path_warmup_epochs)"

  def advice(terms: list[str]) -> str:
    if any(t.startswith("nt_xent") for t in terms):
      return (f"raise loss.temperature (now {config.loss.temperature}: the NT-Xent logits "
              f"are divided by it) or lower {lr}")
    if any(t.startswith(("variance", "codebook", "alignment", "proto_std")) for t in terms):
      return f"lower {lr} or the memory loss weights (loss.*_weight)"
    return f"lower {lr}, or lengthen optim.warmup_epochs (now {config.optim.warmup_epochs})"

  return advice


# ------------------------------------------------------------------------- train step


def make_update(config: ml_collections.ConfigDict, model: AnoMem, tx,
                schedule: optax.Schedule, gate: optax.Schedule | None = None) -> Callable:
  """The pure update on augmented views: (state, views [2B,H,W,3], flags [B]) -> (state, logged).

  Views 0..B-1 and B..2B-1 are the two views of the same B images. Separate from the
  sampling and augmentation so that benchmarks time the model's step on its own. `gate`:
  the memory's path warm-up (`memory_gate_schedule`).
  """
  unbalanced = config.setting == "unbalanced"

  def update(state: TrainState, x: jax.Array, flags: jax.Array):
    chex.assert_shape(x, (2 * flags.shape[0],) + x.shape[1:])
    anomaly_mask = jnp.concatenate([flags, flags]) if unbalanced else None
    memory_gate = None if gate is None else gate(state.step)

    def loss_fn(params):
      out, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, x,
                                 train=True, anomaly_mask=anomaly_mask,
                                 memory_gate=memory_gate, mutable=["batch_stats"])
      terms = loss_terms(out, params, flags, config)
      return total_loss(terms, config), (terms, out, updates["batch_stats"])

    (loss, (terms, out, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    logged = {"loss": loss, **terms, "grad_norm": optax.global_norm(grads),
              "learning_rate": schedule(state.step)}
    if memory_gate is not None:
      logged["memory_gate"] = memory_gate
    for scale in config.memory.scales:
      protos = params[f"memory_{scale}"]["prototypes"]
      logged[f"proto_std_{scale}"] = jnp.mean(jnp.std(protos, axis=0))
      logged[f"memory_entropy_{scale}"] = losses.memory_usage_entropy(out["attention"][scale])
    return new_state, logged

  return update


def make_step_body(config: ml_collections.ConfigDict, model: AnoMem, tx,
                   schedule: optax.Schedule, data_size: int, mesh) -> Callable:
  """One member's step, unjitted: draw the batch by index, rotate it (`shift.rotations`),
  augment twice, then `make_update`'s update. `make_train_step` maps it over K members."""
  batch_size = config.train.batch_size
  rotations = config.shift.rotations
  aug_params = augment.AugmentParams.from_config(config.augment)
  data_spec = sharding.data_sharding(mesh)
  gate = memory_gate_schedule(config, num_steps(config, data_size)[1])
  update = make_update(config, model, tx, schedule, gate)

  def step_fn(state: TrainState, images: jax.Array, is_anomaly: jax.Array):
    data_key = jax.random.fold_in(state.rng, 0)  # fixed: epochs are permutations of it
    aug_key = jax.random.fold_in(jax.random.fold_in(state.rng, 1), state.step)
    idx = device.sample_indices(data_key, state.step, data_size, batch_size)
    batch = jax.lax.with_sharding_constraint(images[idx], data_spec)
    flags = jax.lax.with_sharding_constraint(is_anomaly[idx], data_spec)
    if rotations > 1:
      view1, view2 = augment.shifted_views(aug_key, batch, rotations, aug_params)
      flags = jnp.tile(flags, rotations)  # a rotated labelled anomaly is still one
    else:
      view1, view2 = augment.two_views(aug_key, batch, aug_params)
    x = jnp.concatenate([view1, view2])
    chex.assert_shape(x, (2 * rotations * batch_size,) + images.shape[1:])
    return update(state, x, flags)

  return step_fn


def make_train_step(config: ml_collections.ConfigDict, model: AnoMem, tx,
                    schedule: optax.Schedule, data_size: int, mesh) -> Callable:
  """One jitted step of K stacked members (a single run is K = 1): `make_step_body` over
  the leading member axis (`sharding.over_members`, by `stack.within_group`) of the states
  and training sets [K, N, ...]. States are split over `model` and donated, each member's
  batch over `data`; a member's loss sees its global batch, so NT-Xent negatives and
  BatchNorm statistics span its devices (XLA inserts the collectives).
  """
  return sharding.jit_members_step(
      lambda m: make_step_body(config, model, tx, schedule, data_size, m), mesh,
      config.stack.within_group, conv.compiler_options())


# ------------------------------------------------------------------------------ probe


def knn_probe(model: AnoMem, state: TrainState, split: protocols.ADSplit,
              k: int = 5, memory_gate: float | None = None) -> float:
  """k-NN AUROC of the final embedding on the validation split: a cheap sign that the
  representation learned, read without the test split (`memory_gate`: as `frozen.embed`)."""
  normal = ~split.train_is_anomaly
  bank = frozen.embed(model, state, split.train_images[normal], memory_gate=memory_gate)
  scores = knn.knn_scores(bank, frozen.embed(model, state, split.val_images,
                                             memory_gate=memory_gate),
                          k=min(k, len(bank)))
  return metrics.auroc(scores, split.val_is_anomaly.astype(int))


def curve(config: ml_collections.ConfigDict, model: AnoMem,
          splits: list[protocols.ADSplit], split_state: Callable[[Any], list[Any]],
          per_epoch: int) -> dict[str, Any]:
  """The loop's learning-curve arguments: every `train.probe_every_steps`, each member's
  `knn_probe` (as `validation_knn_auroc`); none without a validation split. During the
  memory's path warm-up the probe reads the network at the gate its step trained with."""
  every = config.train.probe_every_steps
  if not every or not all(s.has_validation for s in splits):
    return {}
  gate = memory_gate_schedule(config, per_epoch)

  def probe(state) -> list[dict[str, float]]:
    out = []
    for s, split in zip(split_state(state), splits, strict=True):
      g = None if gate is None else float(gate(int(distributed.to_host(s.step))))
      out.append({"validation_knn_auroc": knn_probe(
          model, s, split, memory_gate=None if g is None or g >= 1.0 else g)})
    return out

  return {"probe": probe, "probe_every": every}


# ------------------------------------------------------------------------------- loop

class Components(NamedTuple):
  model: AnoMem
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  init_fn: Callable[[jax.Array], TrainState]
  step_fn: Callable


_COMPONENTS: dict[tuple[Any, ...], Components] = {}


def components(config: ml_collections.ConfigDict, n_train: int, image_shape,
               mesh) -> Components:
  """Model, schedule, optimiser, jitted init (one member's state, replicated) and step
  (K stacked members, `make_train_step`) on `sharding.member_mesh(mesh)`: built once per
  config, data and mesh.

  A resumed or repeated `train` in the same process (a notebook, the tests) then reuses
  the compiled step instead of paying XLA's compile time again.
  """
  mesh = sharding.member_mesh(mesh)
  key = (config.to_json_best_effort(sort_keys=True), n_train, tuple(image_shape), mesh)
  if key not in _COMPONENTS:
    total, per_epoch = num_steps(config, n_train)
    model = build_model(config)
    schedule = learning_rate_schedule(config, total, per_epoch)
    tx = build_optimizer(config, schedule)
    _COMPONENTS[key] = Components(model, schedule, tx,
                                  make_init_fn(model, tx, image_shape, mesh),
                                  make_train_step(config, model, tx, schedule, n_train, mesh))
  return _COMPONENTS[key]


@dataclasses.dataclass
class Stage1Result:
  state: TrainState
  model: AnoMem
  steps: int
  probe_auroc: float | None  # on the validation split; None without one
  views_per_second: float | None
  seconds: float
  probe_untrained_auroc: float | None = None  # the same probe of the initial network
  # The step this process's training began at: 0 from scratch, a checkpoint's step when
  # resumed, `steps` when the stage was finished earlier (`seconds` is this process's).
  resumed_from: int = 0


def train(config: ml_collections.ConfigDict, split: protocols.ADSplit, workdir: str,
          mesh: jax.sharding.Mesh, *, stop_after: int | None = None,
          probe: bool = True) -> Stage1Result:
  """`train_members` of one model: trains (or resumes, or loads the finished) stage 1 in
  `workdir/stage1/`."""
  return train_members([config], [split], [workdir], mesh, stop_after=stop_after,
                       probe=probe)[0]


def stack_key(config: ml_collections.ConfigDict) -> str:
  """What members of one program must share: everything stage 1 reads but the seed and
  which classes are normal or labelled anomalous (the data)."""
  c = json.loads(config.to_json_best_effort())
  for section, name in ((c, "seed"), (c["dataset"], "normal_class"), (c, "anomaly_classes")):
    section.pop(name)
  return json.dumps(c, sort_keys=True)


def train_members(configs: list[ml_collections.ConfigDict], splits: list[protocols.ADSplit],
                  workdirs: list[str], mesh: jax.sharding.Mesh, *,
                  stop_after: int | None = None, probe: bool = True) -> list[Stage1Result]:
  """Trains (or resumes, or loads the finished) stage 1 of K models, one per config, split
  and workdir, as one jitted program; a single run is K = 1.

  The K states and training sets are stacked on a leading axis split over the mesh's
  `model` axis (`sharding.member_mesh`), and `make_step_body` is mapped over it; each
  model's batch is split over `data`. Each workdir gets its own checkpoints, metrics,
  probe and FINISHED.json, as a run of that config alone writes them; results match K
  = 1 runs within float rounding (tests/test_stacked.py states the tolerance). The
  configs may differ in their seed and classes only, and the training sets must have one
  size. `stop_after` ends the loop early at that step with a checkpoint (tests, and
  schedules split across sessions); the schedule itself stays that of the config.
  """
  t_start = time.time()
  mesh = sharding.member_mesh(mesh)
  apart = loop.finished_apart(  # finished members loaded alone, the others as one program
      STAGE, workdirs, lambda i: train(configs[i], splits[i], workdirs[i], mesh, probe=probe),
      lambda rest: train_members([configs[i] for i in rest], [splits[i] for i in rest],
                                 [workdirs[i] for i in rest], mesh, stop_after=stop_after,
                                 probe=probe))
  if apart is not None:
    return apart
  if len(configs) > 1 and len({stack_key(c) for c in configs}) != 1:
    raise UserError("configs trained as one program may differ only in seed, "
                    "dataset.normal_class and anomaly_classes")
  if not len(configs) == len(splits) == len(workdirs):
    raise ValueError("one split and one workdir per config")
  config = configs[0]
  config_lib.validate(config, sharding.data_axis_size(mesh))
  image_shape = splits[0].train_images.shape[1:]
  check_shape(config, image_shape)
  n_train = device.one_size([s.n_train for s in splits])
  members = loop.Stacked(workdirs, mesh)
  total, per_epoch = num_steps(config, n_train)
  model, _, _, init_fn, step_fn = components(config, n_train, image_shape, mesh)
  state = members.join([init_fn(jax.random.PRNGKey(c.seed)) for c in configs])
  data = []  # on the devices at the first step: a finished stage never copies it

  def step(s):
    if not data:
      data.append(device.put_stacked([x.train_images for x in splits],
                                     [x.train_is_anomaly for x in splits], mesh))
    return step_fn(s, data[0].images, data[0].is_anomaly)

  res = loop.run_members(STAGE, members, state, step, total=total,
                         log_every=config.train.log_every_steps,
                         checkpoint_every=config.train.checkpoint_every_steps,
                         items_per_step=views_per_step(config) * len(configs),
                         steps_per_epoch=per_epoch, stop_after=stop_after, unit="views",
                         advice=nan_advice(config),
                         **curve(config, model, splits, members.split, per_epoch))
  data.clear()
  out = []
  for c, split, workdir, state, finished in zip(configs, splits, workdirs,
                                                members.split(res.state), res.finished,
                                                strict=True):
    if finished is not None:
      out.append(Stage1Result(state, model, res.step, finished.get("val_probe_auroc"),
                              res.rate, 0.0, finished.get("val_probe_untrained_auroc"),
                              res.step))
    else:
      out.append(_finish(c, split, workdir, model, init_fn, state, res.step, total,
                         res.rate, probe, t_start, res.start))
  return out


def _finish(config, split, workdir, model, init_fn, state, step, total, rate, probe,
            t_start, start) -> Stage1Result:
  """A member's last work once its stage is complete: the k-NN probe (trained and
  untrained), FINISHED.json."""
  probe_auroc = untrained = None
  if step >= total:
    if probe and split.has_validation:
      probe_auroc = knn_probe(model, state, split)
      # The yardstick: has training beaten the random network it started from?
      untrained = knn_probe(model, init_fn(jax.random.PRNGKey(config.seed)), split)
      logging.info("Stage 1 health probe: k-NN AUROC of the embedding on the validation "
                   "split %.4f (the untrained network: %.4f)", probe_auroc, untrained)
      writer = monitoring.MetricWriter(workdir, STAGE)
      writer.drop_key(PROBE_KEYS[0])
      writer.drop_key(PROBE_KEYS[1])
      writer.write(step, dict(zip(PROBE_KEYS, (probe_auroc, untrained), strict=True)))
      writer.close()
    checkpoints.mark_finished(os.path.join(workdir, STAGE),
                              {"step": step, "val_probe_auroc": probe_auroc,
                               "val_probe_untrained_auroc": untrained,
                               "views_per_second": rate,
                               "image_shape": list(split.train_images.shape[1:])})
  return Stage1Result(state, model, step, probe_auroc, rate,
                      time.time() - t_start, untrained, start)


def load_finished(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh,
                  *, repair: bool = True) -> tuple[Stage1Result, tuple[int, ...]]:
  """The finished stage-1 state of `workdir` without any data; also the image shape.
  `repair=False` (the Python API's load) never moves a damaged checkpoint aside."""
  info = checkpoints.finished_info(os.path.join(workdir, STAGE))
  if info is None:
    raise UserError(f"{workdir}/{STAGE} holds no finished stage 1: run the training first")
  size = config.dataset.image_size
  image_shape = tuple(info.get("image_shape") or (size, size, 3))
  model = build_model(config)
  tx = build_optimizer(config, learning_rate_schedule(config, 2, 1))  # shapes only
  template = make_init_fn(model, tx, image_shape, mesh)(jax.random.PRNGKey(config.seed))
  state = checkpoints.restore_final(os.path.join(workdir, STAGE), template, info["step"],
                                    repair=repair)
  return (Stage1Result(state, model, int(state.step), info.get("val_probe_auroc"),
                       info.get("views_per_second"), 0.0, info.get("val_probe_untrained_auroc"),
                       int(state.step)), image_shape)
