"""Report pictures: files exist and open, the ROC curve is exact, heat maps show the right rows."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from mscm_jax import metrics, report

N = 60


@pytest.fixture
def data():
  """40 normals then 20 anomalies, two scores (one tied and coarse), images and two map scales."""
  rng = np.random.default_rng(0)
  y = np.r_[np.zeros(40, bool), np.ones(20, bool)]
  scores = {"knn/scale:0": rng.normal(size=N) + 1.5 * y,
            "coarse": np.round(rng.normal(size=N) + y) * 1000.0}
  images = rng.integers(0, 256, (N, 32, 32, 3), dtype=np.uint8)
  maps = {"8x8": rng.random((N, 8, 8, 1)), "pooled": rng.random((N, 1, 1, 1))}
  return scores, y, images, maps


def test_writes_every_file_as_a_png(tmp_path, data):
  scores, y, images, maps = data
  paths = report.write_report(str(tmp_path / "out"), scores, y.astype(int), images, maps,
                              num_examples=5)
  names = ["roc_knn_scale_0.png", "roc_coarse.png", "roc_all.png", "hist_knn_scale_0.png",
           "hist_coarse.png", "heatmaps_8x8.png", "heatmaps_pooled.png"]
  assert paths == [str(tmp_path / "out" / n) for n in names]
  for p in paths:
    with Image.open(p) as im:
      assert im.format == "PNG" and im.width >= 480 and im.height >= 300
      assert len(set(im.convert("RGB").getdata())) > 10  # something was drawn
  assert sorted(os.listdir(tmp_path / "out")) == sorted(names)


def test_without_maps_only_roc_and_histograms(tmp_path, data):
  scores, y, images, _ = data
  paths = report.write_report(str(tmp_path), {"all": scores["coarse"]}, y, images=images)
  assert [os.path.basename(p) for p in paths] == ["roc_all_2.png", "roc_all.png",
                                                  "hist_all_2.png"]


def test_float_images_and_3d_maps(tmp_path, data):
  scores, y, images, maps = data
  paths = report.write_report(str(tmp_path), scores, y, images / 255.0,
                              {4: maps["8x8"][..., 0]}, rank_by="coarse")
  assert os.path.basename(paths[-1]) == "heatmaps_4.png"


@pytest.mark.parametrize("kind", ["continuous", "ties", "separating"])
def test_roc_curve_is_exact(kind):
  rng = np.random.default_rng(1)
  y = rng.random(N) < 0.3
  y[:2] = [True, False]
  s = {"continuous": rng.normal(size=N) + y, "ties": rng.integers(0, 4, N) + y * 1.0,
       "separating": y * 5.0 + rng.random(N)}[kind]
  fpr, tpr = report._roc_curve(s, y)
  assert (fpr[0], tpr[0]) == (0, 0) and (fpr[-1], tpr[-1]) == (1, 1)
  assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
  assert len(fpr) == len(np.unique(s)) + 1  # one point per distinct score
  area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
  assert area == pytest.approx(metrics.auroc(s, y), abs=1e-12)
  if kind == "separating":
    assert area == 1.0


def test_select_picks_extremes():
  s = np.random.default_rng(2).normal(size=N)
  top, bottom = report._select(s, 8)
  np.testing.assert_array_equal(top, np.argsort(s)[::-1][:8])
  np.testing.assert_array_equal(bottom, np.argsort(s)[:8])
  assert s[top].min() > s[bottom].max()
  assert [len(r) for r in report._select(s[:5], 8)] == [5, 5]


def test_pooled_map_tints_a_tile_uniformly():
  image = np.full((32, 32, 3), 100, np.uint8)
  tile = np.asarray(report._tile(image, np.full((1, 1), 0.3), 0.0, 1.0))
  assert tile.shape == (report._TILE, report._TILE, 3)
  assert len(np.unique(tile.reshape(-1, 3), axis=0)) == 1


def test_file_names_are_safe_and_distinct():
  names = report._file_names(["a/b", "a:b", "ok-1.x"], reserved=("all",))
  assert names == {"a/b": "a_b", "a:b": "a_b_2", "ok-1.x": "ok-1.x"}


def test_rejects_length_mismatch(tmp_path, data):
  scores, y, images, maps = data
  with pytest.raises(ValueError, match="shape"):
    report.write_report(str(tmp_path), {"s": scores["coarse"][:-1]}, y)
  with pytest.raises(ValueError, match="images"):
    report.write_report(str(tmp_path), scores, y, images[:-1], maps)
  with pytest.raises(ValueError, match="maps"):
    report.write_report(str(tmp_path), scores, y, images, {"8x8": maps["8x8"][:-1]})


def test_rejects_single_class(tmp_path, data):
  scores, y, _, _ = data
  with pytest.raises(ValueError, match="both classes"):
    report.write_report(str(tmp_path / "out"), scores, np.zeros(N, int))
  assert not (tmp_path / "out").exists()  # nothing written for bad input


def test_combined_roc_gives_every_curve_its_own_colour_headline_first(tmp_path):
  """13 scores, as a run has: no colour repeats, and the headline four lead the legend."""
  rng = np.random.default_rng(3)
  y = np.r_[np.zeros(40, int), np.ones(20, int)]
  names = ["mscm_res3", "mscm_res4", "mscm_pooled", "deviation_res3", "deviation_res4",
           "deviation_pooled", "pixel_knn", "knn", "mscm_res3_diff", "mscm_res4_diff",
           "mscm_pooled_diff", "deviation", "mscm"]
  scores = {n: rng.normal(size=60) + y * (i % 3) for i, n in enumerate(names)}
  assert report.headline_first(names)[:5] == ["mscm", "deviation", "knn", "pixel_knn",
                                              "mscm_res3"]
  colours = report.distinct_colours(40)
  assert len(set(colours)) == 40
  order = report.headline_first(names)
  report.write_report(str(tmp_path), scores, y)
  with Image.open(tmp_path / "roc_all.png") as im:
    present = set(im.convert("RGB").getdata())
  # Every curve's own colour is on the picture (its line and its legend swatch).
  assert all(c in present for c in colours[:len(order)])
