r"""K classes as one program (`stack.classes`) against K separate runs: every part.

  python experiments/bench_stacked.py --preset=cpu --classes=3 --steps=10

Times, in one process, what K separate runs pay against what one stacked run pays
(`--within_group`: how a group of devices runs its members, `stack.within_group`):
  stage1      compile and steady-state step of one model's program
              (`stage1.make_train_step` with K = 1, what a single run runs) x K, against
              the program of K models (split over a `model` mesh axis);
  stage2      the same for the detectors (`stage2.make_train_step`), on random detector
              inputs of the preset's shapes;
  evaluation  every score of --test_images images (the frozen read, the detectors'
              distances, the embedding), compile included as a run pays it:
              `scoring.Scorer` x K against `scoring.MemberScorers`, which reads the
              shared test split once for all K.
Random images and untrained networks stand in for the data and stage 1 (the cost does
not depend on the values). One JSON line per part goes to
experiments/results/bench_stacked.jsonl.
"""

import os
import platform
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rows  # noqa: E402  (experiments/rows.py, beside this script)

_PRESET = flags.DEFINE_string("preset", "cpu", "config preset: cpu, smoke or full")
_K = flags.DEFINE_integer("classes", 3, "models trained at once")
_STEPS = flags.DEFINE_integer("steps", 10, "timed steps after the compile step")
_TEST = flags.DEFINE_integer("test_images", 2000, "images scored in the evaluation part")
_PARTS = flags.DEFINE_list("parts", ["stage1", "stage2", "evaluation"], "what to time")
_MODEL_AXIS = flags.DEFINE_integer("model_axis", 0, "model mesh axis (0: the largest "
                                   "divisor of the device count that is <= classes)")
_WITHIN = flags.DEFINE_enum("within_group", "vmap", ["vmap", "sequential"],
                            "stack.within_group: how a device group runs its members")
_OUT = flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__), "results",
                                               "bench_stacked.jsonl"), "JSONL to append to")
N_TRAIN = 5000  # one CIFAR-10 class


def _stage1(c, k, mesh, model_mesh, images):
  from mscm_jax.runtime import sharding  # pylint: disable=g-import-not-at-top

  return (rows.stage1_members(c, images[:1], sharding.member_mesh(mesh), _STEPS.value),
          rows.stage1_members(c, images, model_mesh, _STEPS.value))


def _detector_inputs(c, n, seed):
  """Random detector inputs of the preset's shapes ({detector: [n, h, w, c]})."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from mscm_jax import frozen, stage2  # pylint: disable=g-import-not-at-top
  from mscm_jax.models.detector import deviation_input  # pylint: disable=g-import-not-at-top

  model = frozen.frozen_model(c)

  def shapes(x):
    out = model.apply(model.init(jax.random.PRNGKey(0), x, train=False), x, train=False)
    return {name: deviation_input(out["features"][s], out["readout"][s], kind)
            for name, (s, kind) in stage2.detectors(c).items()}

  rng = np.random.default_rng(seed)
  return {name: rng.normal(size=(n,) + v.shape[1:]).astype(np.float32)
          for name, v in jax.eval_shape(shapes, jnp.zeros((1, 32, 32, 3))).items()}


def _stage2(c, k, mesh, model_mesh):
  import numpy as np  # pylint: disable=g-import-not-at-top

  from mscm_jax import stage2  # pylint: disable=g-import-not-at-top
  from mscm_jax.runtime import sharding  # pylint: disable=g-import-not-at-top
  from mscm_jax.data import device  # pylint: disable=g-import-not-at-top

  inputs = [_detector_inputs(c, N_TRAIN, i) for i in range(k)]
  flags_ = np.zeros(N_TRAIN, bool)
  detector = stage2.build_detector(c)
  total, _ = stage2.num_steps(c, N_TRAIN)
  tx, schedule = stage2.build_optimizer(c, total)
  timed = []
  for m, n in ((sharding.member_mesh(mesh), 1), (model_mesh, k)):
    maps = {s: device.stack_rows([x[s] for x in inputs[:n]], m) for s in inputs[0]}
    timed.append(rows.timed_step(
        stage2.make_train_step(c, detector, tx, schedule, N_TRAIN, m),
        stage2.init_members([c] * n, detector, tx, inputs[:n], m),
        (maps, device.stack_rows([flags_] * n, m)), _STEPS.value))
    del maps
  return timed


def _evaluation(c, k, mesh, model_mesh, test):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from mscm_jax import frozen, scoring, stage1, stage2  # pylint: disable=g-import-not-at-top
  from mscm_jax.runtime import sharding  # pylint: disable=g-import-not-at-top

  def scorer(m, seed):
    parts = stage1.components(c, N_TRAIN, (32, 32, 3), m)
    s1 = stage1.Stage1Result(parts.init_fn(jax.random.PRNGKey(seed)), parts.model, 0, None,
                             None, 0.0)
    detector = stage2.build_detector(c)
    tx, _ = stage2.build_optimizer(c, 1)
    one = sharding.member_mesh(m)
    state = sharding.unstack(stage2.init_members([c], detector, tx,
                                                 [_detector_inputs(c, 64, seed)], one),
                             one, 1)[0]
    names = stage2.detectors(c)
    norm = {"mscm": {n: [0.0, 1.0] for n in names},
            "deviation": {s: [0.0, 1.0] for s in stage2.deviation_weights(c)}}
    bank = np.stack([frozen.embed(frozen.frozen_model(c), s1.state,
                                  np.rot90(test[:256], r, axes=(1, 2)))
                     for r in range(c.shift.rotations)])
    return scoring.Scorer(c, s1, stage2.Stage2Result(state, detector, 0, norm, 0.0,
                                                     bank=bank, detector_spread=[0.0, 1.0]))

  alone = [scorer(mesh, i) for i in range(k)]
  t0 = time.time()
  for s in alone:
    s.scores(test)
    s.embedding(test)
  separate = time.time() - t0
  members = scoring.MemberScorers([scorer(model_mesh, i) for i in range(k)], model_mesh)
  t0 = time.time()
  members.scores_and_read(test)
  members.embedding(test)
  return separate, time.time() - t0


def main(_):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from mscm_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from mscm_jax.runtime import sharding  # pylint: disable=g-import-not-at-top

  c = config_lib.apply_preset(config_lib.base_config(),
                              "" if _PRESET.value == "full" else _PRESET.value)
  c.stack.within_group = _WITHIN.value
  config_lib.validate(c)
  k = _K.value
  rng = np.random.default_rng(0)
  mesh = sharding.make_mesh(c.train.num_devices)
  axis = _MODEL_AXIS.value or sharding.default_model_axis(mesh.devices.size, k)
  model_mesh = sharding.make_model_mesh(axis, c.train.num_devices)
  base = {"preset": _PRESET.value, "classes": k,
          "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
          "mesh": dict(model_mesh.shape), "within_group": _WITHIN.value,
          "host": f"{platform.machine()} {os.cpu_count()} cpus"}
  for part in _PARTS.value:
    if part in ("stage1", "stage2"):
      if part == "stage1":
        images = [rng.integers(0, 256, (N_TRAIN, 32, 32, 3), dtype=np.uint8)
                  for _ in range(k)]
        (one_compile, one_step), (k_compile, k_step) = _stage1(c, k, mesh, model_mesh, images)
        batch = c.train.batch_size
      else:
        (one_compile, one_step), (k_compile, k_step) = _stage2(c, k, mesh, model_mesh)
        batch = c.stage2.batch_size
      row = {**base, "part": part, "batch_size": batch,
             "separate_compile_s": round(k * one_compile, 1),
             "stacked_compile_s": round(k_compile, 1),
             "separate_step_s": round(k * one_step, 4), "stacked_step_s": round(k_step, 4),
             "compile_ratio": round(k_compile / (k * one_compile), 3),
             "step_ratio": round(k_step / (k * one_step), 3), "steps": _STEPS.value}
    elif part == "evaluation":
      test = rng.integers(0, 256, (_TEST.value, 32, 32, 3), dtype=np.uint8)
      separate, stacked = _evaluation(c, k, mesh, model_mesh, test)
      row = {**base, "part": part, "test_images": _TEST.value,
             "separate_s": round(separate, 1), "stacked_s": round(stacked, 1),
             "ratio": round(stacked / separate, 3)}
    else:
      raise app.UsageError(f"--parts: {part!r} is not stage1, stage2 or evaluation")
    rows.emit(row, _OUT.value)


if __name__ == "__main__":
  app.run(main)
