"""Config files, presets and validation."""

import importlib.util
import pathlib

import pytest

from mscm_jax import config as config_lib
from mscm_jax.errors import ConfigError

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.py"))


def _load(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_four_families_exist():
  assert {p.stem for p in CONFIG_FILES} >= {
      "cifar10_oneclass", "cifar10_unbalanced", "cifar100_oneclass", "folder_oneclass"}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("preset", ["", "cpu", "cpu_long", "smoke"])
def test_every_config_and_preset_validates_and_uses_its_fields(path, preset):
  module = _load(path)
  assert "python -m mscm_jax.main" in module.__doc__  # each config states its command
  c = config_lib.validate(module.get_config(preset))
  for field in ("dataset.name", "dataset.data_dir", "dataset.normal_class", "setting",
                "anomaly_ratio", "anomaly_classes", "seed", "model.widths", "memory.mode",
                "loss.temperature", "optim.name", "train.batch_size"):
    section, _, name = field.rpartition(".")
    assert name in (c[section] if section else c), field
  assert config_lib.ignored_fields(c) == []  # a preset sets no field it ignores


def test_presets_shrink_the_schedule():
  full = config_lib.apply_preset(config_lib.base_config(), "")
  cpu = config_lib.apply_preset(config_lib.base_config(), "cpu")
  smoke = config_lib.apply_preset(config_lib.base_config(), "smoke")
  assert full.model.widths == (64, 128, 256, 512) and full.train.epochs == 500
  assert cpu.model.widths[-1] < full.model.widths[-1] and cpu.train.epochs < full.train.epochs
  assert smoke.train.batch_size < cpu.train.batch_size
  # cpu_long is the cpu model and objective with a longer schedule, nothing else.
  long = config_lib.apply_preset(config_lib.base_config(), "cpu_long")
  diff = {k for k, v in long.to_dict().items() if v != cpu.to_dict()[k]}
  assert diff <= {"train", "optim"} and "train" in diff
  assert long.train.epochs > cpu.train.epochs
  assert long.optim.learning_rate == cpu.optim.learning_rate
  assert long.model == cpu.model and long.memory == cpu.memory and long.stage2 == cpu.stage2
  with pytest.raises(ConfigError, match="unknown preset"):
    config_lib.apply_preset(config_lib.base_config(), "huge")


@pytest.mark.parametrize("field,value,match", [
    ("setting", "twoclass", "setting"),
    ("memory.mode", "sideways", "memory.mode"),
    ("memory.scales", ("res2", "res9"), "memory.scales"),
    ("augment.crop_scale", (0.5, 0.2), "crop_scale"),
    ("augment.jitter_prob", 1.5, "jitter_prob"),
    ("optim.name", "rmsprop", "optim.name"),
    ("train.batch_size", 1, "batch_size"),
    ("memory.path_warmup_epochs", 500.0, "path_warmup_epochs"),  # = train.epochs
    ("optim.clip_norm", -1.0, "clip_norm"),
    ("stage2.inputs", "cosine_distance+angle", "stage2.inputs entry"),
    ("stage2.inputs", "difference+difference", "twice"),
    ("stack.workdir_name", "runs", "stack.workdir_name"),  # every class in one workdir
    ("stack.workdir_name", "{class}/s0", "stack.workdir_name"),
    ("stack.workdir_name", "{class}.{seed}", "stack.workdir_name"),
])
def test_validation_names_the_bad_field(field, value, match):
  c = config_lib.set_fields(config_lib.base_config(), {field: value})
  with pytest.raises(ConfigError, match=match):
    config_lib.validate(c)


def test_detector_input_kinds_join_with_plus():
  c = config_lib.base_config()
  c.stage2.inputs = "cosine_distance+difference"
  assert config_lib.validate(c).stage2.inputs == "cosine_distance+difference"


def test_codebook_training_needs_branch_mode():
  c = config_lib.base_config()
  c.memory.train, c.memory.mode = "codebook", "replace"
  with pytest.raises(ConfigError, match="codebook"):
    config_lib.validate(c)


def test_fields_the_config_ignores_are_named():
  c = config_lib.base_config()
  assert config_lib.ignored_fields(c) == []
  c.anomaly_ratio = 0.2
  c.anomaly_classes = ("cat",)
  c.stage2.classifier = True
  c.stage2.eta = 2.0
  lines = config_lib.ignored_fields(c)
  assert [line.split("=")[0] for line in lines] == ["anomaly_ratio", "anomaly_classes",
                                                    "stage2.classifier", "stage2.eta"]
  assert all("setting='unbalanced'" in line and "\n" not in line for line in lines)
  c.setting = "unbalanced"
  assert config_lib.ignored_fields(c) == []
  c.stage2.rotated_anomalies, c.setting = True, "oneclass"  # rotated images are labelled
  assert [line.split("=")[0] for line in config_lib.ignored_fields(c)] == [
      "anomaly_ratio", "anomaly_classes", "stage2.classifier"]
  c = config_lib.set_fields(config_lib.base_config(), {
      "loss.codebook_weight": 2.0, "optim.name": "adam", "optim.momentum": 0.5,
      "validation.fraction": 0.0, "validation.anomalies": 10, "stack.model_axis": 2})
  assert [line.split("=")[0] for line in config_lib.ignored_fields(c)] == [
      "loss.codebook_weight", "optim.momentum", "validation.anomalies", "stack.model_axis"]
  c.memory.path_warmup_epochs = 1.0  # the branch memory is never in the path
  assert config_lib.ignored_fields(c)[1].startswith("memory.path_warmup_epochs=1.0")
  c.memory.path_warmup_epochs = 0.0
  c.memory.train, c.memory.mode = "codebook", "branch"  # now it is the codebook's weight...
  c.loss.alignment_weight = c.loss.scale_weight = 0.5  # ...and these have no effect
  assert [line.split("=")[0] for line in config_lib.ignored_fields(c)] == [
      "loss.alignment_weight", "loss.scale_weight", "optim.momentum", "validation.anomalies",
      "stack.model_axis"]


def test_an_old_field_name_is_one_line_that_names_the_new_one(tmp_path):
  """A workdir's config.json from before a rename, and an old input kind, each refused
  in one line naming the new name."""
  import json  # pylint: disable=g-import-not-at-top

  saved = json.loads(config_lib.base_config().to_json_best_effort())
  saved["stage2"]["deviation"] = saved["stage2"].pop("inputs")
  path = tmp_path / "config.json"
  path.write_text(json.dumps(saved))
  with pytest.raises(ConfigError, match="stage2.deviation, since renamed stage2.inputs") as e:
    config_lib.load_json(str(path))
  assert "\n" not in str(e.value)
  saved["stage2"]["deviation"] = "similarity+difference"  # an old kind under the old name
  path.write_text(json.dumps(saved))
  old = config_lib.load_json(str(path), old_names=True)  # rescoring an old run
  assert old.stage2.inputs == "cosine_similarity+difference"
  c = config_lib.base_config()
  c.stage2.inputs = "similarity+difference"
  with pytest.raises(ConfigError, match="'similarity' was renamed 'cosine_similarity'"):
    config_lib.validate(c)


def test_a_renamed_operational_field_is_read_under_its_new_name(tmp_path):
  """A saved config with evaluate.batch_size (now frozen.batch_size, which changes no
  result) still loads, so its workdir is not refused for it; on the command line the old
  name is an error (test_bad_input)."""
  import json  # pylint: disable=g-import-not-at-top

  saved = json.loads(config_lib.base_config().to_json_best_effort())
  saved["evaluate"]["batch_size"] = 77
  del saved["frozen"]
  path = tmp_path / "config.json"
  path.write_text(json.dumps(saved))
  c = config_lib.load_json(str(path))
  assert c.frozen.batch_size == 77 and "batch_size" not in c.evaluate
