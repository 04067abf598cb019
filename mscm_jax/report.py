"""Figures of a run: ROC curves, score histograms, deviation heat maps, the learning curve.

A metric says how well a score separates the classes; these show how, where in an image a
score fires, and how training went. Each `*_figure` function returns a matplotlib `Figure`
to restyle or reuse; `write_report` saves a run's set as PNGs. Figures are built without
pyplot, so no GUI backend or global figure state is involved.
"""

from __future__ import annotations

import colorsys
import json
import os
import re
from collections.abc import Iterable
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from mscm_jax import metrics
from mscm_jax.names import HEADLINE

__all__ = ["heatmap_figure", "histogram_figure", "learning_curve_figure", "read_metrics",
           "roc_figure", "write_report"]

_NORMAL, _ANOMALY = "tab:blue", "tab:orange"
_MARGINS = {"left": 0.11, "right": 0.97, "bottom": 0.11, "top": 0.93}
# Logged values that are not loss terms: drawn elsewhere or not at all.
_NOT_LOSS = re.compile(r"^(stage|step|time|epoch|grad_norm|learning_rate|views_per_second|"
                       r"maps_per_second|memory_entropy_.*|proto_std_.*|validation_.*)$")


def _roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(FPR, TPR) at each distinct score, highest first, from (0, 0) to (1, 1).

  Tied scores make one point, as a threshold takes or leaves them together; so the
  trapezoid area under the curve is exactly the tie-aware `metrics.auroc`.
  """
  s, y = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
  order = np.argsort(-s, kind="stable")
  s, y = s[order], y[order]
  ends = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each tied group
  tp, fp = np.r_[0, np.cumsum(y)[ends]], np.r_[0, np.cumsum(~y)[ends]]
  return fp / fp[-1], tp / tp[-1]


def headline_first(names: list[str]) -> list[str]:
  """The headline scores in their order, then the rest in theirs."""
  return [n for n in HEADLINE if n in names] + [n for n in names if n not in HEADLINE]


def distinct_colours(n: int) -> list[tuple[float, float, float]]:
  """n different RGB colours in [0, 1]: tab20's, then hues spread around the wheel."""
  tab20 = matplotlib.colormaps["tab20"].colors  # strong ten first, then their light partners
  out = [tuple(c) for c in (tab20[0::2] + tab20[1::2])[:n]]
  for i in range(n - len(out)):
    hue = (i * 0.618034) % 1.0  # golden-ratio steps keep neighbours far apart
    rgb = colorsys.hsv_to_rgb(hue, 0.9, 0.55 if i % 2 else 0.8)
    while rgb in out:  # never a repeat, however many scores
      rgb = (rgb[0], rgb[1], (rgb[2] + 1 / 256) % 1.0)
    out.append(rgb)
  return out


def roc_figure(scores: dict[str, np.ndarray], is_anomaly: np.ndarray,
               title: str | None = None) -> Figure:
  """ROC curves of every score on one axes, headline scores first in the legend and on top."""
  y = np.asarray(is_anomaly).astype(bool)
  fig = Figure(figsize=(6.4, 4.8))
  fig.subplots_adjust(**_MARGINS)  # fixed margins: a layout engine costs 4x the drawing
  ax = fig.add_subplot()
  ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6")
  order = headline_first(list(scores))
  colours = dict(zip(order, distinct_colours(len(order)), strict=True))
  aucs = {name: metrics.auroc(np.asarray(scores[name], np.float64), y) for name in order}
  for z, name in enumerate(reversed(order)):  # the headline scores drawn last, on top
    fpr, tpr = _roc_curve(scores[name], y)
    ax.plot(fpr, tpr, color=colours[name], lw=2.5 if name in HEADLINE else 1.5,
            label=f"{name} ({aucs[name]:.3f})", zorder=2 + z)
  if len(order) > 1:
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], loc="lower right", fontsize="small").set_zorder(99)
  ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="false positive rate (normals flagged)",
         ylabel="true positive rate (anomalies caught)")
  if title is None and len(order) == 1:
    title = f"{order[0]}: AUROC {aucs[order[0]]:.3f}"
  ax.set_title(title or "ROC")
  ax.grid(alpha=0.3)
  return fig


def histogram_figure(name: str, score: np.ndarray, is_anomaly: np.ndarray) -> Figure:
  """Class-wise score densities on shared bins; outliers beyond 0.5/99.5% join the end bins."""
  s, y = np.asarray(score, np.float64), np.asarray(is_anomaly).astype(bool)
  lo, hi = np.quantile(s, [0.005, 0.995])
  if hi - lo <= 1e-12 * max(1.0, abs(lo)):
    lo, hi = lo - 0.5, hi + 0.5
  edges = np.linspace(lo, hi, 41)
  fig = Figure(figsize=(6.4, 4.8))
  fig.subplots_adjust(**_MARGINS)
  ax = fig.add_subplot()
  for mask, colour, label in ((~y, _NORMAL, "normal"), (y, _ANOMALY, "anomaly")):
    density = np.histogram(np.clip(s[mask], lo, hi), edges, density=True)[0]
    ax.stairs(density, edges, fill=True, color=colour, alpha=0.3)
    ax.stairs(density, edges, color=colour, lw=2, label=f"{label} (n={int(mask.sum())})")
  ax.set(xlabel="score", ylabel="density",
         title=f"{name}: scores by class (AUROC {metrics.auroc(s, y):.3f})")
  ax.legend(loc="upper right")
  ax.grid(alpha=0.3)
  return fig


def _select(score: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices of the k highest scores (highest first) and k lowest (lowest first)."""
  order = np.argsort(-np.asarray(score, np.float64), kind="stable")
  k = min(k, order.size)
  return order[:k], order[::-1][:k]


def heatmap_figure(images: np.ndarray, dmaps: np.ndarray, score: np.ndarray,
                   is_anomaly: np.ndarray, num_examples: int = 8,
                   title: str = "deviation maps") -> Figure:
  """The most (top row) and least anomalous images by `score`, each under its deviation map
  (bilinear, one colour range for every tile: the 1st-99th percentile of the shown maps)."""
  rows = _select(score, max(1, num_examples))
  shown_idx = np.concatenate(rows)
  dmaps = np.asarray(dmaps)[shown_idx]  # only the shown tiles are converted
  dmaps = np.asarray(dmaps, np.float64).reshape(dmaps.shape[:3])  # drop a channel of 1
  images = np.asarray(images)[shown_idx]
  if np.issubdtype(images.dtype, np.integer):
    images = images / 255.0
  images = np.clip(images, 0, 1)
  at = {i: k for k, i in enumerate(shown_idx)}
  vmin, vmax = np.percentile(dmaps, [1, 99])
  if vmax <= vmin:
    vmin, vmax = vmin - 0.5, vmax + 0.5
  y = np.asarray(is_anomaly).astype(bool)
  n = len(rows[0])
  fig = Figure(figsize=(max(1.3 * n, 5.0) + 1.0, 3.6))
  fig.subplots_adjust(left=0.05, right=0.86, bottom=0.08, top=0.86, wspace=0.08, hspace=0.35)
  axes = fig.subplots(2, n, squeeze=False)
  h, w = images.shape[1:3]
  for r, (label, idx) in enumerate(zip(("most anomalous", "least anomalous"), rows,
                                       strict=True)):
    for j, i in enumerate(idx):
      ax = axes[r, j]
      ax.imshow(images[at[i]], extent=(0, w, h, 0), interpolation="nearest")
      shown = ax.imshow(dmaps[at[i]], extent=(0, w, h, 0), cmap="turbo", alpha=0.5,
                        vmin=vmin, vmax=vmax, interpolation="bilinear")
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_xlabel(f"{score[i]:.3g} {'A' if y[i] else 'N'}", fontsize="small")
    axes[r, 0].set_ylabel(label)
  fig.colorbar(shown, cax=fig.add_axes((0.89, 0.12, 0.02, 0.7)), label="deviation")
  fig.suptitle(title)
  return fig


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The records of a run's metrics.jsonl (monitoring.MetricWriter), in file order."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def learning_curve_figure(records: Iterable[dict[str, Any]]) -> Figure:
  """One panel per stage: the loss and each of its terms over the steps (log scale where
  every value is positive), and the stage-1 validation probe wherever it was logged."""
  by_stage: dict[str, list[dict[str, Any]]] = {}
  for rec in records:
    by_stage.setdefault(rec.get("stage", "?"), []).append(rec)
  if not by_stage:
    raise ValueError("no metrics records to draw")
  fig = Figure(figsize=(6.0 * len(by_stage), 4.4))
  fig.subplots_adjust(left=0.08, right=0.93, bottom=0.12, top=0.92, wspace=0.35)
  axes = fig.subplots(1, len(by_stage), squeeze=False)[0]
  for ax, (stage, recs) in zip(axes, by_stage.items(), strict=True):
    terms = [k for k in recs[0] if not _NOT_LOSS.match(k)]
    terms = ["loss"] * ("loss" in terms) + sorted(t for t in terms if t != "loss")
    positive = True
    for colour, term in zip(distinct_colours(len(terms)), terms, strict=True):
      pts = np.array([(r["step"], r[term]) for r in recs if term in r], np.float64)
      ax.plot(pts[:, 0], pts[:, 1], color=colour, lw=2.5 if term == "loss" else 1.2,
              label=term)
      positive &= bool(np.all(pts[:, 1] > 0))
    if terms and positive:
      ax.set_yscale("log")
    probe = [(r["step"], r["validation_probe_knn_auroc"]) for r in recs
             if "validation_probe_knn_auroc" in r]
    if probe:
      twin = ax.twinx()
      twin.plot(*np.array(probe).T, "k*", ms=10, label="validation k-NN probe")
      base = [r["validation_probe_untrained_knn_auroc"] for r in recs
              if "validation_probe_untrained_knn_auroc" in r]
      if base:
        twin.axhline(base[-1], color="k", ls=":", lw=1, label="untrained network")
      twin.set(ylim=(0, 1), ylabel="AUROC")
      twin.legend(loc="center right", fontsize="small")
    ax.set(title=stage, xlabel="step", ylabel="loss terms")
    if terms:
      ax.legend(loc="upper right", fontsize="x-small", ncols=2)
    ax.grid(alpha=0.3)
  return fig


def _file_names(keys: list, reserved: tuple[str, ...] = ()) -> dict:
  """File-safe, distinct names: [A-Za-z0-9_.-] kept, others -> '_', clashes numbered."""
  out, used = {}, set(reserved)
  for k in keys:
    base = name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(k))
    i = 2
    while name in used:
      name, i = f"{base}_{i}", i + 1
    used.add(name)
    out[k] = name
  return out


def _check(scores: dict[str, np.ndarray], is_anomaly: np.ndarray, images: np.ndarray | None,
           maps: dict[str, np.ndarray] | None, rank_by: str) -> np.ndarray:
  """Returns is_anomaly as bool, raising up front on anything that would spoil a picture."""
  y = np.asarray(is_anomaly)
  if not scores:
    raise ValueError("scores is empty; pass at least one {name: [N] array}")
  if y.ndim != 1 or not np.isin(y, [0, 1]).all():
    raise ValueError(f"is_anomaly must be a 1-D array of 0/1 or bool, got shape {y.shape}")
  for k, v in scores.items():
    if np.shape(v) != y.shape:
      raise ValueError(f"scores[{k!r}] has shape {np.shape(v)} but is_anomaly has {y.shape}")
  n_a = int(y.astype(bool).sum())
  if n_a in (0, y.size):
    raise ValueError(f"is_anomaly must contain both classes; got {n_a} anomalies and "
                     f"{y.size - n_a} normals")
  if images is not None and maps is not None:
    if rank_by not in scores:
      raise ValueError(f"rank_by={rank_by!r} is not a score name: {list(scores)}")
    if np.ndim(images) != 4 or len(images) != y.size or np.shape(images)[-1] != 3:
      raise ValueError(f"images must be [{y.size}, H, W, 3], got {np.shape(images)}")
    for c, m in maps.items():
      if len(m) != y.size or not (np.ndim(m) == 3 or np.ndim(m) == 4 and np.shape(m)[-1] == 1):
        raise ValueError(f"maps[{c!r}] must be [{y.size}, h, w(, 1)], got {np.shape(m)}")
  return y.astype(bool)


def write_report(out_dir: str, scores: dict[str, np.ndarray], is_anomaly: np.ndarray,
                 images: np.ndarray | None = None, maps: dict[str, np.ndarray] | None = None,
                 rank_by: str | None = None, num_examples: int = 8,
                 metrics_path: str | None = None) -> list[str]:
  """Writes the report's PNGs into out_dir and returns their paths, in a stable order.

  Files: roc_<name>.png per score, roc_all.png, hist_<name>.png per score; with images and
  maps, heatmaps_<scale>.png per map scale, ranked by scores[rank_by] (default: the first
  score); with metrics_path (a metrics.jsonl), learning_curve.png. Names are made file-safe
  (see `_file_names`); a score named "all" is written as roc_all_2.png so it cannot
  overwrite roc_all.png.
  """
  rank_by = next(iter(scores), None) if rank_by is None else rank_by
  y = _check(scores, is_anomaly, images, maps, rank_by)
  records = read_metrics(metrics_path) if metrics_path else []
  os.makedirs(out_dir, exist_ok=True)
  names = _file_names(list(scores), reserved=("all",))
  s = {k: np.asarray(v, np.float64) for k, v in scores.items()}
  paths: list[str] = []

  def save(fig: Figure, file_name: str) -> None:
    paths.append(os.path.join(out_dir, file_name))
    fig.savefig(paths[-1], dpi=100)

  for k in s:
    save(roc_figure({k: s[k]}, y), f"roc_{names[k]}.png")
  save(roc_figure(s, y, "ROC, all scores"), "roc_all.png")
  for k in s:
    save(histogram_figure(k, s[k], y), f"hist_{names[k]}.png")
  if images is not None and maps is not None:
    for c, c_name in _file_names(list(maps)).items():
      save(heatmap_figure(images, maps[c], s[rank_by], y, num_examples,
                          f"deviation maps, scale {c}, ranked by {rank_by}"),
           f"heatmaps_{c_name}.png")
  if records:
    save(learning_curve_figure(records), "learning_curve.png")
  return paths

