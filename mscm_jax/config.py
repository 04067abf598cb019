"""The one config schema every experiment family shares, its presets and its checks.

Config files in `configs/` call `base_config()`, set the few fields that define their
experiment family, and apply a preset chosen by the config-string argument
(`--config=configs/cifar10_oneclass.py:cpu`). Fields the paper leaves open are here
with the default our ablations chose (docs/method.md; measurements in `experiments/results/`).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from mscm_jax.errors import ConfigError
from mscm_jax.runtime.identity import OPERATIONAL
from mscm_jax.names import (INPUT_KINDS, MEMORY_MODES, MEMORY_TRAIN, RENAMED_FIELDS,
                             RENAMED_KINDS, SCALES)

SETTINGS = ("oneclass", "unbalanced")
OPTIMIZERS = ("lars", "sgd", "adam")
DTYPES = ("float32", "bfloat16")
WITHIN_GROUP = ("vmap", "sequential")
PRESETS = ("", "full", "cpu", "cpu_long", "smoke")
STOP_AFTER = ("", "data", "stage1", "stage2")


def _any(value: Any) -> ml_collections.FieldReference:
  # `object` fields take an index, a name or a tuple of either from the command line.
  return ml_collections.FieldReference(value, field_type=object)


def base_config() -> ml_collections.ConfigDict:
  """Paper-scale defaults (method.md sections 2-4); presets shrink them."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.setting = "oneclass"
  # Unbalanced setting: labelled anomalies = anomaly_ratio x the normal training count,
  # drawn from the training split of `anomaly_classes` (empty: every non-normal class).
  c.anomaly_ratio = 0.05
  c.anomaly_classes = _any(())

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "cifar10"  # a tfds name, or "folder" for a {train,test}/<class>/ tree
  c.dataset.data_dir = ""  # tfds data dir or folder root; "" = $TFDS_DATA_DIR, else tfds' default
  c.dataset.download = False  # let tfds download and prepare (needs network)
  c.dataset.normal_class = _any(0)  # index or name, or a tuple of them
  c.dataset.label_key = "label"  # "coarse_label" for the CIFAR-100 super-classes
  c.dataset.train_split = "train"
  c.dataset.test_split = "test"
  c.dataset.image_size = 32  # folder images are resized to this square size

  # The validation split every choice is read on (the stage-1 probe, learning curves,
  # ablations), so that the test split is read once, for the final table: `fraction` of
  # the normal training images, kept out of both stages, against `anomalies` training
  # images of the other classes (unused by the one-class protocol; never the labelled
  # anomalies that train). fraction 0: no validation split.
  c.validation = ml_collections.ConfigDict()
  c.validation.fraction = 0.1
  c.validation.anomalies = 2000

  # SimCLR CIFAR augmentation set (method.md section 2).
  c.augment = ml_collections.ConfigDict()
  c.augment.crop_scale = (0.08, 1.0)
  c.augment.crop_ratio = (3.0 / 4.0, 4.0 / 3.0)
  c.augment.flip_prob = 0.5
  c.augment.brightness = 0.4
  c.augment.contrast = 0.4
  c.augment.saturation = 0.4
  c.augment.hue = 0.1
  c.augment.jitter_prob = 0.8
  c.augment.grayscale_prob = 0.2

  # CSI's shifting transformations (method.md section 8): each drawn image also enters the
  # batch rotated by 90, 180, 270 degrees (rotations=4), every rotation another instance
  # (a negative of the others) in NT-Xent; loss.rotation_weight > 0 adds a linear head
  # that predicts the rotation. With rotations > 1 the evaluation adds `knn_rot` (the
  # k-NN score averaged over the rotations) and, with the head, `rotation` (the head's
  # negative log-likelihood of the true rotation, averaged). 1 = no rotation.
  c.shift = ml_collections.ConfigDict()
  c.shift.rotations = 1

  c.model = ml_collections.ConfigDict()
  c.model.stage_sizes = (2, 2, 2, 2)  # ResNet-18
  c.model.widths = (64, 128, 256, 512)
  # Hidden and output widths of every projection head: the final embedding's and each
  # memory scale's (the per-scale contrastive heads) alike.
  c.model.head_dims = (512, 128)
  c.model.dtype = "float32"  # compute dtype; parameters stay float32

  c.memory = ml_collections.ConfigDict()
  c.memory.scales = ("res2", "res3", "res4")
  c.memory.mode = "branch"  # full schedule: unmeasured; see the `cpu` preset for its ablation
  c.memory.train = "contrastive"
  c.memory.num_prototypes = 256
  c.memory.proto_dim = 128
  c.memory.beta = 0.0  # 0 = 1/sqrt(proto_dim)
  c.memory.learnable_beta = False
  c.memory.shrink_threshold = 0.0  # MemAE hard shrinkage; 0 disables
  c.memory.retrieval_steps = 1
  c.memory.top_k = 0  # > 0: each read attends to its k best prototypes only; 0 = all
  # replace/residual: the read-out enters the encoder's path over this many epochs (the next
  # stage gets f + g r, or f + g (r - f), g rising linearly 0 -> 1), so that a random
  # memory is not a bottleneck at the start; 1 from then on and in every evaluation.
  c.memory.path_warmup_epochs = 0.0

  c.loss = ml_collections.ConfigDict()
  c.loss.temperature = 0.5
  c.loss.scale_weight = 1.0  # lambda_s for per-scale NT-Xent (branch mode)
  c.loss.variance_weight = 1.0  # lambda_var for the prototype variance hinge
  c.loss.alignment_weight = 0.0  # ||stopgrad(f) - r||^2 in replace/residual/branch modes
  c.loss.codebook_weight = 1.0  # the only loss of a memory with memory.train='codebook'
  c.loss.rotation_weight = 0.0  # cross-entropy of the rotation head (needs shift.rotations > 1)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "lars"
  # Per 256 instances (images x shift.rotations); scaled linearly with the batch size.
  c.optim.learning_rate = 0.3
  c.optim.warmup_epochs = 10
  c.optim.weight_decay = 1e-6
  c.optim.momentum = 0.9
  c.optim.clip_norm = 0.0  # > 0: gradients clipped to this global norm first; 0 = off

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 512  # global batch, in images (two views each)
  c.train.epochs = 500  # epochs of the normal training set
  c.train.log_every_steps = 50
  c.train.checkpoint_every_steps = 1000
  # A learning curve: the k-NN AUROC of the embedding on the validation split every this
  # many steps, in metrics.jsonl as `validation_knn_auroc` (0: only the final probe).
  c.train.probe_every_steps = 0
  c.train.num_devices = 0  # 0 = every device (of every process in a multi-process run)

  # Stage 2 (method.md section 3): one bias-free distance detector per scale on deviation maps.
  c.stage2 = ml_collections.ConfigDict()
  c.stage2.scales = ()  # scales that feed the detector; () = every memory scale
  c.stage2.weights = ()  # w_s of the combined score, one per stage2 scale; () = all 1
  c.stage2.deviation_scales = ()  # scales summed in the training-free `deviation`; () = scales
  # Detector input: "cosine_distance" 1 - cos(f, r) map | "cosine_similarity" cos(f, r) map
  # | "squared_distance" ||f - r||^2 / C map | "difference" the tensor f - r | "feature" f
  # alone (no memory: the control of what the read-out adds); "+"-joined kinds (e.g.
  # "cosine_similarity+difference") give every scale one detector per kind, summed into
  # `mscm`.
  c.stage2.inputs = "cosine_distance"
  c.stage2.top_k = -1  # retrieval when reading the maps: -1 = as trained, 0 = soft over all
  c.stage2.widths = (16, 32)
  c.stage2.out_dim = 32
  c.stage2.classifier = False  # unbalanced: an extra BCE head on the detector features
  c.stage2.bce_weight = 1.0
  c.stage2.eta = 1.0  # Deep SAD weight of the labelled anomalies
  # CSI's shifted distribution as labelled anomalies (needs shift.rotations > 1): every
  # fit-set normal also enters the fit rotated by a seeded k*90 degrees, 0 < k < rotations,
  # and the detector trains in the Deep SAD form against them, also in the one-class setting.
  c.stage2.rotated_anomalies = False
  c.stage2.learning_rate = 1e-3  # AdamW, cosine decay
  c.stage2.weight_decay = 1e-5
  c.stage2.batch_size = 256
  c.stage2.epochs = 30
  c.stage2.holdout_fraction = 0.1  # normal training images kept out to set score spreads
  c.stage2.log_every_steps = 50
  c.stage2.checkpoint_every_steps = 500

  c.evaluate = ml_collections.ConfigDict()
  c.evaluate.knn_k = 5  # neighbours of the `knn` and `pixel_knn` scores
  # `mscm` = `detector` + knn_weight x the k-NN score (`knn_rot` with rotations), both in
  # units of their spread on normal training images; 0 = the paper's detector score alone.
  # 1: validation AUROC 0.741 (0) -> 0.771 on the :cpu grid's 20 runs, 0.5 level with it,
  # 0.25-1.5 within 0.004 (experiments/results/mscm_knn.md).
  c.evaluate.knn_weight = 1.0
  # > 0: `mscm` also adds this times the rotation head's score (`rotation`, CSI's shift
  # score) in units of its spread on the normal training images; needs the head
  # (loss.rotation_weight > 0). 0 = off.
  c.evaluate.rotation_weight = 0.0
  # True: every score is the mean of the image's and its mirror image's (a test-time
  # ensemble over stage 1's horizontal flip); the k-NN bank stays unmirrored. Off: validation
  # mscm +0.001 on the :cpu grid's 20 runs for twice the evaluation's cost
  # (experiments/results/tta.md).
  c.evaluate.flip_tta = False
  c.evaluate.report = True  # PNGs in workdir/report/

  # Images per forward pass of the frozen stage-1 model, wherever it is read: stage 2's
  # training read, the evaluation, the Python API.
  c.frozen = ml_collections.ConfigDict()
  c.frozen.batch_size = 500

  # "data": load, split and preview only; "stage1"/"stage2": stop after it; "": everything.
  c.stop_after = ""

  c.preview = ml_collections.ConfigDict()
  c.preview.num_images = 16  # augmented views written to workdir/preview/ by `main`

  # Several one-class runs as one program: "all" or a tuple of class names / indices, each
  # the normal class of its own run in workdir/<class>/; their stage 1 is vmapped over a
  # `model` mesh axis of `model_axis` device groups (0: the most that divide the devices
  # and the classes). () = one run, of dataset.normal_class, in workdir itself.
  c.stack = ml_collections.ConfigDict()
  c.stack.classes = _any(())
  # Each class's workdir under `workdir`: `{class}` is replaced by the class's name (the
  # sweep runner names them as its cells, `{class}.oneclass.s0`, so either runs them).
  c.stack.workdir_name = "{class}"
  c.stack.model_axis = 0
  # How a device group trains its several members: "vmap" (vectorised: one wide step) or
  # "sequential" (one member after another inside the one program, `lax.map`: one
  # member's activations in memory at a time, for models too large to vectorise). On
  # this CPU (experiments/results/bench_stacked.md) vmap's stage-1 step is 1.36x three
  # separate steps and sequential's 2.59x (XLA:CPU runs the step 2.4x slower inside a
  # loop, even for one member); for the stage-2 detectors sequential is 1.05x and vmap
  # 1.33x. Stage 1 dominates, so vmap is the default.
  c.stack.within_group = "vmap"
  return c


def stack_workdir(c: ml_collections.ConfigDict, name: str) -> str:
  """The workdir, relative to the stacked run's, of the class `name`."""
  pattern = c.stack.workdir_name
  try:
    out, other = (pattern.format(**{"class": n}) for n in (name, name + "_"))
  except (AttributeError, KeyError, IndexError, ValueError):
    out = other = ""
  if out == other or "/" in out or out in (".", ".."):  # one workdir for every class
    raise ConfigError(f"stack.workdir_name={pattern!r}: give a folder name with {{class}} in "
                      "it and no other braces or '/', e.g. '{class}.oneclass.s0'")
  return out


def get_field(c: ml_collections.ConfigDict, dotted: str) -> Any:
  """The value of a dotted field (`"stage2.epochs"`)."""
  section, _, name = dotted.rpartition(".")
  return (c[section] if section else c)[name]


def set_fields(c: ml_collections.ConfigDict, fields: dict[str, Any]) -> ml_collections.ConfigDict:
  """Sets dotted fields in place (`{"stage2.epochs": 3, "seed": 1}`) and returns `c`."""
  for dotted, value in fields.items():
    section, _, name = dotted.rpartition(".")
    (c[section] if section else c)[name] = value
  return c


def apply_preset(c: ml_collections.ConfigDict, preset: str | None) -> ml_collections.ConfigDict:
  """Shrinks the paper-scale schedule for a CPU (`cpu`, `cpu_long`) or for tests (`smoke`)."""
  preset = (preset or "").strip()
  if preset not in PRESETS:
    raise ConfigError(f"unknown preset {preset!r}; choose one of {PRESETS[1:]}")
  if preset in ("cpu", "cpu_long"):
    # `cpu`: about 10 minutes for one CIFAR class on 2 CPU cores, the whole command;
    # `cpu_long`: the same model for 7.5x the steps (about 45 minutes of stage 1 alone on 2
    # cores), standing in for the full schedule on a machine without an accelerator
    # (experiments/results/cpu_long.md). Each choice below cites the validation-split table
    # it was read from (docs/method.md section 9).
    c.model.stage_sizes = (1, 1, 1, 1)
    c.model.widths = (16, 32, 64, 128)
    c.model.head_dims = (128, 64)
    # res2 (16x16) is left out to keep the step cheap (experiments/results/bench_stage1.jsonl).
    # The three scales' detectors together are above the best one alone in 17 of 20 `cpu`
    # runs; res4 + pooled ties them (experiments/results/scales.md).
    c.memory.scales = ("res3", "res4", "pooled")
    # A memory that costs the encoder nothing (its encoder learns from NT-Xent and the
    # rotation head alone): memories trained with the encoder tie it (residual, with a path
    # warm-up and clipping) or fall below it (replace, branch) on the validation split,
    # automobile and cat x 2 seeds (experiments/results/memory_modes.md).
    c.memory.mode = "branch"
    c.memory.train = "codebook"
    # The training-free deviation on the pooled scale: level with res4 at `cpu`, above it at
    # `cpu_long`, above res3 at both (experiments/results/scales.md).
    c.stage2.deviation_scales = ("pooled",)
    # One f - r detector per scale, trained with CSI's turned normals as its labelled
    # anomalies: validation mscm higher than the cos-map + f - r detectors before it on
    # each of automobile and cat x 2 seeds, and above `knn` on the mean
    # (experiments/results/detector_shifted.md).
    c.stage2.inputs = "difference"
    c.stage2.rotated_anomalies = True
    c.memory.num_prototypes = 64
    c.memory.proto_dim = 64
    # lr 0.6 and temperature 0.2: the best validation probe of lr 0.3 / 0.6 / 1.2 on
    # automobile and cat; temperature 0.5 is below, 0.1 ties
    # (experiments/results/lr_temperature.md).
    c.loss.temperature = 0.2
    # CSI's rotations: at the same views per run they raise the validation probe by
    # 0.27-0.30 on automobile and 0.03-0.05 on cat over the rotation-free recipe (two
    # seeds each; experiments/results/levers.md).
    c.shift.rotations = 4
    c.loss.rotation_weight = 1.0
    c.optim.name = "sgd"
    c.optim.learning_rate = 0.6
    c.optim.warmup_epochs = 1
    c.optim.weight_decay = 5e-4
    # 64 images x 4 rotations x 2 views = 512 views a step, about 1 s on 2 cores: 5 epochs
    # (355 steps) fill the 10-minute budget.
    c.train.batch_size = 64
    c.train.epochs = 5
    c.train.log_every_steps = 10
    c.train.checkpoint_every_steps = 50
    if preset == "cpu_long":
      # 7.5x `cpu`'s steps (2,700): the same design scaled, not chosen by a comparison
      # (experiments/results/cpu_long.md).
      c.train.epochs = 38
      c.train.log_every_steps = 20
      c.train.checkpoint_every_steps = 200
  elif preset == "smoke":
    # Seconds, for tests and a first look at a new dataset.
    c.model.stage_sizes = (1, 1, 1, 1)
    c.model.widths = (8, 8, 16, 16)
    c.model.head_dims = (32, 16)
    c.memory.num_prototypes = 8
    c.memory.proto_dim = 16
    c.optim.name = "sgd"
    c.optim.learning_rate = 0.05
    c.optim.warmup_epochs = 0
    c.train.batch_size = 16
    c.train.epochs = 1
    c.train.log_every_steps = 1
    c.train.checkpoint_every_steps = 2
    c.preview.num_images = 4
    c.stage2.widths = (8,)
    c.stage2.out_dim = 8
    c.stage2.batch_size = 16
    c.stage2.epochs = 2
    c.stage2.log_every_steps = 1
    c.frozen.batch_size = 64
  return c


def load_json(path: str, old_names: bool = False) -> ml_collections.ConfigDict:
  """The config a run saved as `workdir/config.json`, over today's defaults.

  Fields added since the run keep their defaults; a field the schema no longer has is
  an error, since the saved run cannot be reproduced faithfully. A renamed field is read
  under its new name when it is operational; any other refuses the workdir, unless
  `old_names` (rescoring an old run, never training in it), which also translates renamed
  detector input kinds.
  """
  import json  # pylint: disable=g-import-not-at-top

  try:
    with open(path) as f:
      raw = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path} cannot be read as a saved config ({type(e).__name__}: {e}); "
                      "rerun the training in this workdir to rewrite it") from None
  flat: dict[str, Any] = {}

  def walk(tree: dict[str, Any], prefix: str) -> None:
    for k, v in tree.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      else:
        flat[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v

  walk(raw, "")
  for old, new in RENAMED_FIELDS.items():
    if old in flat and (old_names or new in OPERATIONAL):
      flat[new] = flat.pop(old)
    elif old in flat:
      raise ConfigError(f"{path} holds {old}, since renamed {new}: this run was made by an "
                        "older mscm_jax; retrain it in a new workdir (or with --discard_stale)")
  if old_names and "stage2.inputs" in flat:
    flat["stage2.inputs"] = "+".join(RENAMED_KINDS.get(k, k)
                                     for k in flat["stage2.inputs"].split("+"))
  c = base_config()
  try:
    c.update_from_flattened_dict(flat)
  except (KeyError, TypeError) as e:
    raise ConfigError(f"{path} does not fit today's config schema: {e}") from None
  return c


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ConfigError(f"{name}={value!r} is not one of {choices}")


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
  if not lo <= value <= hi:
    raise ConfigError(f"{name}={value!r} must lie in [{lo}, {hi}]")


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
  if isinstance(value, bool) or not isinstance(value, int):
    raise ConfigError(f"{name}={value!r} must be an integer")
  if value < lo or (hi is not None and value > hi):
    bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
    raise ConfigError(f"{name}={value!r} must be an integer {bound}")


def _check_positive(name: str, value: float, hint: str = "") -> None:
  if not value > 0:
    raise ConfigError(f"{name}={value!r} must be > 0{hint}")


def _check_ints(name: str, values: Any, n: int | None = None) -> None:
  """A non-empty tuple of positive integers (of length `n` when given)."""
  values = tuple(values)
  if not values or (n is not None and len(values) != n):
    what = f"{n} entries" if n is not None else "at least one entry"
    raise ConfigError(f"{name}={values} needs {what}")
  for v in values:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ConfigError(f"{name}={values}: every entry must be a positive integer")


def _check_scales(name: str, scales: Any, allowed: tuple[str, ...]) -> None:
  for s in scales:
    _check_choice(f"{name} entry", s, allowed)
  if len(set(scales)) != len(tuple(scales)):
    raise ConfigError(f"{name}={tuple(scales)} names a scale twice")


def _oneclass(c) -> bool:
  return c.setting == "oneclass"


# (field, when it has no effect, what it needs): each said once at a run's start when set
# away from its default, since a silently dropped field reads as a measured null result.
_IGNORED_WHEN = (
    ("anomaly_ratio", _oneclass, "labelled anomalies need setting='unbalanced'"),
    ("anomaly_classes", _oneclass, "labelled anomalies need setting='unbalanced'"),
    ("stage2.classifier", _oneclass,
     "its BCE head needs labelled anomalies (setting='unbalanced')"),
    ("stage2.bce_weight", lambda c: _oneclass(c) or not c.stage2.classifier,
     "it weighs the BCE head of stage2.classifier=True in setting='unbalanced'"),
    ("stage2.eta", lambda c: _oneclass(c) and not c.stage2.rotated_anomalies,
     "it weighs labelled anomalies (setting='unbalanced' or stage2.rotated_anomalies=True)"),
    ("loss.codebook_weight", lambda c: c.memory.train != "codebook",
     "it weighs the memories' loss with memory.train='codebook'"),
    ("loss.alignment_weight", lambda c: c.memory.train == "codebook",
     "with memory.train='codebook' the codebook term is the alignment (loss.codebook_weight)"),
    ("loss.scale_weight",
     lambda c: c.memory.mode != "branch" or c.memory.train != "contrastive",
     "the per-scale NT-Xent heads exist with memory.mode='branch', memory.train='contrastive'"),
    ("memory.path_warmup_epochs", lambda c: c.memory.mode == "branch",
     "only a memory in the encoder's path (memory.mode='replace' or 'residual') enters it"),
    ("optim.momentum", lambda c: c.optim.name == "adam",
     "optim.name='adam' keeps its own moments (momentum is for 'lars' and 'sgd')"),
    ("validation.anomalies", lambda c: c.validation.fraction == 0,
     "validation.fraction=0 makes no validation split"),
    ("stack.model_axis", lambda c: not c.stack.classes, "it lays out the stack.classes runs"),
    ("stack.within_group", lambda c: not c.stack.classes, "it lays out the stack.classes runs"),
    ("stack.workdir_name", lambda c: not c.stack.classes, "it names the stack.classes runs"),
)


def ignored_fields(c: ml_collections.ConfigDict) -> list[str]:
  """One line for each field set away from its default that this config ignores: said
  at the start of a run, rather than silently dropped."""
  base, out = base_config(), []
  for name, ignored, why in _IGNORED_WHEN:
    value, default = get_field(c, name), get_field(base, name)
    if value != default and value not in ((), "") and ignored(c):
      out.append(f"{name}={value!r} has no effect here: {why}")
  return out


def validate(c: ml_collections.ConfigDict,
             n_devices: int | None = None) -> ml_collections.ConfigDict:
  """Every field with a meaningful range, checked before any work: one line per error.

  This is the one place the config is checked, and `ConfigError` the one error type;
  the model modules still assert their own invariants, but a config that passes here
  never reaches them. `n_devices`: the mesh size, when known, for batch divisibility.
  """
  _check_int("seed", c.seed, 0, 2**31 - 1)
  _check_choice("setting", c.setting, SETTINGS)
  _check_choice("stop_after", c.stop_after, STOP_AFTER)
  if c.setting == "unbalanced":
    if not 0 < c.anomaly_ratio <= 10:
      raise ConfigError(f"anomaly_ratio={c.anomaly_ratio!r} must lie in (0, 10] in the "
                        "unbalanced setting (labelled anomalies per normal image)")

  d = c.dataset
  for name in ("name", "label_key", "train_split", "test_split"):
    if not isinstance(d[name], str) or not d[name].strip():
      raise ConfigError(f"dataset.{name}={d[name]!r} must be a non-empty string")
  if d.normal_class in ("", (), None):
    raise ConfigError("dataset.normal_class is empty: give a class index or name")
  _check_int("dataset.image_size", d.image_size, 8, 4096)

  _check_range("validation.fraction", c.validation.fraction, 0.0, 0.5)
  _check_int("validation.anomalies", c.validation.anomalies, 0)

  a = c.augment
  for name in ("crop_scale", "crop_ratio"):
    pair = tuple(getattr(a, name))
    if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
      raise ConfigError(f"augment.{name}={pair} needs (low, high) with 0 < low <= high")
  if a.crop_scale[1] > 1:
    raise ConfigError("augment.crop_scale cannot exceed 1 (the whole image)")
  for name in ("flip_prob", "jitter_prob", "grayscale_prob"):
    _check_range(f"augment.{name}", getattr(a, name), 0.0, 1.0)
  for name in ("brightness", "contrast", "saturation"):
    _check_range(f"augment.{name}", getattr(a, name), 0.0, 1.0)
  _check_range("augment.hue", a.hue, 0.0, 0.5)

  m = c.model
  _check_ints("model.stage_sizes", m.stage_sizes, 4)
  _check_ints("model.widths", m.widths, 4)
  _check_ints("model.head_dims", m.head_dims)
  _check_choice("model.dtype", m.dtype, DTYPES)

  mem = c.memory
  if not mem.scales:
    raise ConfigError("memory.scales is empty: stage 2 needs at least one memory scale")
  _check_scales("memory.scales", mem.scales, SCALES)
  _check_choice("memory.mode", mem.mode, MEMORY_MODES)
  _check_choice("memory.train", mem.train, MEMORY_TRAIN)
  if mem.train == "codebook" and mem.mode != "branch":
    raise ConfigError("memory.train='codebook' needs memory.mode='branch'")
  _check_int("memory.num_prototypes", mem.num_prototypes, 1)
  _check_int("memory.proto_dim", mem.proto_dim, 1)
  if mem.beta < 0:
    raise ConfigError(f"memory.beta={mem.beta!r} must be >= 0 (0 = 1/sqrt(proto_dim))")
  if not 0 <= mem.shrink_threshold < 1:
    raise ConfigError(f"memory.shrink_threshold={mem.shrink_threshold!r} must lie in [0, 1) "
                      "(an attention weight; 0 disables)")
  _check_int("memory.retrieval_steps", mem.retrieval_steps, 1)
  _check_int("memory.top_k", mem.top_k, 0, mem.num_prototypes)

  lo = c.loss
  _check_positive("loss.temperature", lo.temperature,
                  " (NT-Xent divides by it; the presets use 0.2-0.5)")
  for name in ("scale_weight", "variance_weight", "alignment_weight", "codebook_weight",
               "rotation_weight"):
    if lo[name] < 0:
      raise ConfigError(f"loss.{name}={lo[name]!r} must be >= 0")
  _check_int("shift.rotations", c.shift.rotations, 1, 4)
  if lo.rotation_weight > 0 and c.shift.rotations < 2:
    raise ConfigError("loss.rotation_weight > 0 needs shift.rotations >= 2 (rotations to "
                      "predict)")

  o = c.optim
  _check_choice("optim.name", o.name, OPTIMIZERS)
  _check_positive("optim.learning_rate", o.learning_rate)
  for name in ("warmup_epochs", "weight_decay", "clip_norm"):
    if o[name] < 0:
      raise ConfigError(f"optim.{name}={o[name]!r} must be >= 0")
  _check_range("optim.momentum", o.momentum, 0.0, 0.999)

  t = c.train
  _check_int("train.batch_size", t.batch_size, 2)  # contrastive negatives need a pair
  _check_positive("train.epochs", t.epochs)
  _check_int("train.log_every_steps", t.log_every_steps, 1)
  _check_int("train.checkpoint_every_steps", t.checkpoint_every_steps, 1)
  _check_int("train.probe_every_steps", t.probe_every_steps, 0)
  _check_int("train.num_devices", t.num_devices, 0)
  if not 0 <= mem.path_warmup_epochs < t.epochs:
    raise ConfigError(f"memory.path_warmup_epochs={mem.path_warmup_epochs!r} must lie in "
                      f"[0, train.epochs={t.epochs!r}) (the memory must end fully in the path)")

  s2 = c.stage2
  for field in ("scales", "deviation_scales"):
    _check_scales(f"stage2.{field}", s2[field], SCALES)
    for s in s2[field]:
      if s not in mem.scales:
        raise ConfigError(f"stage2.{field} entry {s!r} has no memory (memory.scales="
                          f"{tuple(mem.scales)})")
  n_scales = len(s2.scales or mem.scales)
  if s2.weights and (len(s2.weights) != n_scales or min(s2.weights) < 0):
    raise ConfigError(f"stage2.weights={tuple(s2.weights)} needs {n_scales} non-negative "
                      "numbers, one per stage-2 scale")
  kinds = s2.inputs.split("+")
  for kind in kinds:
    if kind in RENAMED_KINDS:
      raise ConfigError(f"stage2.inputs entry {kind!r} was renamed {RENAMED_KINDS[kind]!r}")
    _check_choice("stage2.inputs entry", kind, INPUT_KINDS)
  if len(set(kinds)) != len(kinds):
    raise ConfigError(f"stage2.inputs={s2.inputs!r} names a kind twice")
  _check_int("stage2.top_k", s2.top_k, -1, mem.num_prototypes)
  _check_ints("stage2.widths", s2.widths)
  _check_int("stage2.out_dim", s2.out_dim, 1)
  _check_positive("stage2.learning_rate", s2.learning_rate)
  _check_positive("stage2.eta", s2.eta)
  if s2.rotated_anomalies and c.shift.rotations < 2:
    raise ConfigError("stage2.rotated_anomalies needs shift.rotations >= 2 (the rotations "
                      "its anomalies are drawn from)")
  for name in ("weight_decay", "bce_weight"):
    if s2[name] < 0:
      raise ConfigError(f"stage2.{name}={s2[name]!r} must be >= 0")
  _check_int("stage2.batch_size", s2.batch_size, 1)
  _check_positive("stage2.epochs", s2.epochs)
  _check_range("stage2.holdout_fraction", s2.holdout_fraction, 0.0, 0.5)
  _check_int("stage2.log_every_steps", s2.log_every_steps, 1)
  _check_int("stage2.checkpoint_every_steps", s2.checkpoint_every_steps, 1)

  e = c.evaluate
  _check_int("evaluate.knn_k", e.knn_k, 1)
  if not isinstance(e.knn_weight, (int, float)) or e.knn_weight < 0:
    raise ConfigError(f"evaluate.knn_weight={e.knn_weight!r} must be a number >= 0")
  if not isinstance(e.rotation_weight, (int, float)) or e.rotation_weight < 0:
    raise ConfigError(f"evaluate.rotation_weight={e.rotation_weight!r} must be a number >= 0")
  if e.rotation_weight > 0 and c.loss.rotation_weight <= 0:
    raise ConfigError(f"evaluate.rotation_weight={e.rotation_weight!r} adds the rotation "
                      "head's score to `mscm`: it needs the head (loss.rotation_weight > 0)")
  if not isinstance(e.flip_tta, bool):
    raise ConfigError(f"evaluate.flip_tta={e.flip_tta!r} must be True or False")
  _check_int("frozen.batch_size", c.frozen.batch_size, 1)
  _check_int("preview.num_images", c.preview.num_images, 1)
  _check_int("stack.model_axis", c.stack.model_axis, 0)
  _check_choice("stack.within_group", c.stack.within_group, WITHIN_GROUP)
  classes = c.stack.classes
  if isinstance(classes, str) and classes not in ("", "all"):
    classes = (classes,)
  if classes not in ("", "all") and not isinstance(classes, (tuple, list)):
    raise ConfigError(f"stack.classes={classes!r}: give 'all' or a tuple of class names "
                      "or indices")
  if classes and c.dataset.name == "arrays":
    raise ConfigError("stack.classes needs a dataset source (tfds or folder), not arrays")
  stack_workdir(c, "x")  # a bad pattern fails here, before anything runs

  if n_devices:
    for name, batch in (("train.batch_size", t.batch_size),
                        ("stage2.batch_size", s2.batch_size)):
      if batch % n_devices:
        raise ConfigError(f"{name}={batch} must be divisible by the {n_devices} devices of "
                          "the mesh (or set train.num_devices)")
  return c
