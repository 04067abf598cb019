"""The Python API: load a finished workdir or fit from arrays; score; validation errors."""

import numpy as np
import pytest
from conftest import smoke_config

from mscm_jax import config as config_lib, pipeline
from mscm_jax.api import AnoMemDetector, InputError, NotFittedError
from mscm_jax.scoring import Scorer
from mscm_jax.errors import UserError


@pytest.fixture(scope="module")
def loaded(finished_run):
  config, workdir, _ = finished_run
  return AnoMemDetector.load(str(workdir)), config, workdir


def test_loaded_detector_reproduces_the_run(loaded):
  det, config, workdir = loaded
  saved = np.load(workdir / "scores.npz")
  test = pipeline.load_split(config).test_images
  scores = det.scores(test)
  for name in ("mscm", "deviation", "mscm_res3", "deviation_pooled"):
    np.testing.assert_allclose(scores[name], saved[name], rtol=1e-5, atol=1e-6, err_msg=name)
  np.testing.assert_array_equal(det.score(test), scores["mscm"])
  # float input in [0, 1] is the same image
  np.testing.assert_allclose(det.score(test[:4] / 255.0), scores["mscm"][:4], rtol=1e-4,
                             atol=1e-5)


def test_flip_tta_averages_every_score_with_the_mirror_images(loaded):
  det, config, _ = loaded
  test = pipeline.load_split(config).test_images[:6]
  mirror = test[:, :, ::-1]
  plain, mirrored = det.scores(test), det.scores(mirror)
  tta = Scorer(config_lib.set_fields(config.copy_and_resolve_references(),
                                     {"evaluate.flip_tta": True}), det._scorer.s1,
               det._scorer.s2)
  both = tta.scores(test)
  assert set(both) == set(plain)
  for name, v in plain.items():
    np.testing.assert_allclose(both[name], (v + mirrored[name]) / 2, rtol=1e-6, atol=1e-9,
                               err_msg=name)
  assert not np.allclose(plain["mscm"], mirrored["mscm"])  # the mirror is another image
  for name, v in tta.scores(mirror).items():  # and the ensemble does not see the mirror
    np.testing.assert_allclose(v, both[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_deviation_maps_per_scale(loaded):
  det, config, _ = loaded
  test = pipeline.load_split(config).test_images[:5]
  maps = det.deviation_maps(test)
  assert maps["res3"].shape == (5, 4, 4) and maps["pooled"].shape == (5, 1, 1)
  np.testing.assert_allclose(maps["res3"].mean(axis=(1, 2)),
                             det.scores(test)["deviation_res3"], rtol=1e-5)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 8, 8, 3), np.uint8), "trained on"),
    (np.zeros((16, 16, 3), np.uint8), "images\\[None\\]"),
    (np.full((2, 16, 16, 3), 2.0, np.float32), "must lie in \\[0, 1\\]"),
    (np.full((2, 16, 16, 3), np.nan, np.float32), "NaN"),
    (np.zeros((2, 16, 16, 3), np.int32), "uint8 or float"),
    (np.zeros((2, 16, 16, 4), np.uint8), "shape"),
    (np.zeros((0, 16, 16, 3), np.uint8), "empty"),
])
def test_bad_input_is_a_clear_error(loaded, bad, message):
  det, _, _ = loaded
  with pytest.raises(InputError, match=message):
    det.score(bad)


def test_unfitted_and_missing_workdir_errors(tmp_path):
  with pytest.raises(NotFittedError):
    AnoMemDetector(smoke_config(tmp_path)).score(np.zeros((1, 16, 16, 3), np.uint8))
  with pytest.raises(UserError, match="config.json"):
    AnoMemDetector.load(str(tmp_path))


def test_fit_from_arrays_then_load(tmp_path):
  rng = np.random.default_rng(0)
  normal = rng.integers(0, 60, (32, 16, 16, 3), dtype=np.uint8)
  normal[..., 2] += 150
  c = smoke_config(tmp_path, **{"stage2.epochs": 2})
  det = AnoMemDetector(c, str(tmp_path / "w")).fit(normal)
  odd = rng.integers(0, 60, (8, 16, 16, 3), dtype=np.uint8)
  odd[..., 0] += 150
  scores = det.score(np.concatenate([normal[:8], odd]))
  assert scores.shape == (16,) and np.isfinite(scores).all()
  again = AnoMemDetector.load(str(tmp_path / "w"))
  np.testing.assert_allclose(again.score(odd), scores[8:], rtol=1e-5, atol=1e-6)
  # a stage 2 finished before k-NN banks were kept: refused, then completed by the training
  (tmp_path / "w" / "stage2" / "scoring.npz").unlink()
  with pytest.raises(UserError, match="no k-NN bank"):
    AnoMemDetector.load(str(tmp_path / "w"))
  AnoMemDetector(c, str(tmp_path / "w")).fit(normal)
  np.testing.assert_allclose(AnoMemDetector.load(str(tmp_path / "w")).score(odd), scores[8:],
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(InputError, match="unbalanced"):
    AnoMemDetector(c).fit(normal, is_anomaly=np.r_[np.ones(4, bool), np.zeros(28, bool)])
  with pytest.raises(InputError, match="shape"):
    AnoMemDetector(c).fit(normal, is_anomaly=np.zeros(3, bool))
