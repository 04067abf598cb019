"""Report figures: files written, each curve drawn from its own data, the right heat-map rows."""

from __future__ import annotations

import json
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
  metrics_path = tmp_path / "metrics.jsonl"
  metrics_path.write_text("".join(json.dumps(r) + "\n" for r in _records()))
  paths = report.write_report(str(tmp_path / "out"), scores, y.astype(int), images, maps,
                              num_examples=5, metrics_path=str(metrics_path))
  names = ["roc_knn_scale_0.png", "roc_coarse.png", "roc_all.png", "hist_knn_scale_0.png",
           "hist_coarse.png", "heatmaps_8x8.png", "heatmaps_pooled.png", "learning_curve.png"]
  assert paths == [str(tmp_path / "out" / n) for n in names]
  for p in paths:
    with Image.open(p) as im:
      assert im.format == "PNG" and im.width >= 480 and im.height >= 300
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


def test_combined_roc_draws_each_score_exactly_in_its_own_colour_headline_first():
  """13 scores, as a run has: every curve is its score's exact ROC, no colour repeats, and
  the headline four lead the legend."""
  rng = np.random.default_rng(3)
  y = np.r_[np.zeros(40, int), np.ones(20, int)]
  names = ["mscm_res3", "mscm_res4", "mscm_pooled", "deviation_res3", "deviation_res4",
           "deviation_pooled", "pixel_knn", "knn", "mscm_res3_diff", "mscm_res4_diff",
           "mscm_pooled_diff", "deviation", "mscm"]
  scores = {n: rng.normal(size=60) + y * (i % 3) for i, n in enumerate(names)}
  assert report.headline_first(names)[:5] == ["mscm", "deviation", "knn", "pixel_knn",
                                              "mscm_res3"]
  assert len(set(report.distinct_colours(40))) == 40
  ax = report.roc_figure(scores, y).axes[0]
  curves = {line.get_label().split(" (")[0]: line for line in ax.get_lines()[1:]}
  assert set(curves) == set(names)
  for n, line in curves.items():
    fpr, tpr = report._roc_curve(scores[n], y)
    np.testing.assert_array_equal(line.get_xdata(), fpr)
    np.testing.assert_array_equal(line.get_ydata(), tpr)
    assert line.get_label() == f"{n} ({metrics.auroc(scores[n], y):.3f})"
  assert len({tuple(line.get_color()) for line in curves.values()}) == len(names)
  legend = [t.get_text().split(" (")[0] for t in ax.get_legend().get_texts()]
  assert legend == report.headline_first(names)


def test_histogram_shows_each_class_density_on_shared_bins(data):
  scores, y, _, _ = data
  s = scores["knn/scale:0"]
  ax = report.histogram_figure("knn", s, y).axes[0]
  outlines = [p for p in ax.patches if not p.get_fill()]
  assert [p.get_label() for p in outlines] == ["normal (n=40)", "anomaly (n=20)"]
  for patch, mask in zip(outlines, (~y, y), strict=True):
    heights, edges = patch.get_data()[:2]  # (values, edges, baseline)
    lo, hi = np.quantile(s, [0.005, 0.995])
    np.testing.assert_allclose(heights, np.histogram(np.clip(s[mask], lo, hi), edges,
                                                     density=True)[0])
    assert np.sum(heights * np.diff(edges)) == pytest.approx(1.0)


def test_heatmap_rows_are_the_extremes_with_their_own_maps(data):
  scores, y, images, maps = data
  s = scores["knn/scale:0"]
  fig = report.heatmap_figure(images, maps["8x8"], s, y, num_examples=3)
  top, bottom = report._select(s, 3)
  tiles = [ax for ax in fig.axes if ax.get_images() and ax.get_xlabel()]
  assert len(tiles) == 6
  for ax, i in zip(tiles, np.r_[top, bottom], strict=True):
    picture, tint = ax.get_images()
    np.testing.assert_allclose(picture.get_array(), images[i] / 255.0)
    np.testing.assert_array_equal(tint.get_array(), maps["8x8"][i, ..., 0])
    assert ax.get_xlabel() == f"{s[i]:.3g} {'A' if y[i] else 'N'}"


def _records():
  """A metrics.jsonl's records: stage 1 with a probe at its end, then stage 2."""
  out = [{"stage": "stage1", "step": k, "loss": 5.0 - k, "nt_xent": 2.0 - k,
          "learning_rate": 0.1, "grad_norm": 1.0} for k in range(3)]
  out.append({"stage": "stage1", "step": 2, "validation_probe_knn_auroc": 0.8,
              "validation_probe_untrained_knn_auroc": 0.6})
  out += [{"stage": "stage2", "step": k, "loss": 1.0 / (k + 1)} for k in range(4)]
  return out


def test_learning_curve_draws_each_stage_loss_terms_and_the_probe():
  fig = report.learning_curve_figure(_records())
  stage1, stage2 = fig.axes[:2]
  assert (stage1.get_title(), stage2.get_title()) == ("stage1", "stage2")
  lines = {line.get_label(): line for line in stage1.get_lines()}
  assert set(lines) == {"loss", "nt_xent"}  # learning rate and gradient norm are not losses
  np.testing.assert_array_equal(lines["nt_xent"].get_ydata(), [2.0, 1.0, 0.0])
  np.testing.assert_array_equal(stage2.get_lines()[0].get_ydata(), [1, 1 / 2, 1 / 3, 1 / 4])
  assert stage2.get_yscale() == "log" and stage1.get_yscale() == "linear"  # a 0 in stage 1
  probe = [line for ax in fig.axes[2:] for line in ax.get_lines()]
  assert [tuple(line.get_ydata()) for line in probe] == [(0.8,), (0.6, 0.6)]
  with pytest.raises(ValueError, match="no metrics"):
    report.learning_curve_figure([])
