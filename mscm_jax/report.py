"""Pictures to look at after an anomaly-detection run: ROC curves, score histograms, heat maps.

A metric says how well a score separates the classes; these show how, and where in an image
a score fires. Drawn with Pillow only, which keeps plotting libraries out of the package.
"""

from __future__ import annotations

import colorsys
import functools
import os
import re

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mscm_jax import metrics
from mscm_jax.names import HEADLINE

__all__ = ["write_report"]

_W, _H = 640, 480
_BOX = (76, 44, _W - 36, _H - 60)  # plot area in pixels: left, top, right, bottom
_BLUE, _ORANGE, _GREY = (31, 119, 180), (255, 127, 14), (150, 150, 150)
# Tableau's 20 colours: the strong ten, then their light partners.
_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
            (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150),
            (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
            (219, 219, 141), (158, 218, 229)]
_RAMP = np.array([[40, 60, 220], [255, 230, 0], [220, 20, 20]], np.float64)  # low, mid, high
_TILE = 96  # heat-map tile side in pixels


@functools.cache
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  """Pillow's default font at `size`, or its fixed bitmap font without FreeType."""
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, OSError, ImportError, AttributeError):
    return ImageFont.load_default()


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], s: str, size: int = 13,
          align: str = "c") -> None:
  """Draws `s` vertically centred at xy, centred or "l"/"r" aligned (works for bitmap fonts)."""
  font = _font(size)
  left, top, right, bottom = draw.textbbox((0, 0), s, font=font)
  x = xy[0] - {"l": left, "c": (left + right) / 2, "r": right}[align]
  draw.text((x, xy[1] - (top + bottom) / 2), s, fill=(0, 0, 0), font=font)


def _num(v: float, digits: int = 3) -> str:
  """`digits` significant digits, written out (4000, not 4e+03) unless very large or small."""
  if v == 0 or 1e-3 <= abs(v) < 1e6:
    return np.format_float_positional(v + 0.0, precision=digits, fractional=False, trim="-")
  return f"{v:.{digits}g}"


def _fmt(values: np.ndarray) -> list[str]:
  """Tick labels with 3 significant digits, more only where 3 would repeat a label."""
  for digits in range(3, 12):
    labels = [_num(v, digits) for v in values]
    if len(set(labels)) == len(labels):
      break
  return labels


def _ticks(lo: float, hi: float, n: int = 6) -> np.ndarray:
  """At most about n round-number ticks (1, 2 or 5 times a power of ten) within [lo, hi]."""
  step = 10.0 ** np.floor(np.log10((hi - lo) / n))
  step *= next(m for m in (1, 2, 5, 10) if (hi - lo) / (step * m) <= n)
  return np.arange(np.ceil(lo / step - 1e-9) * step, hi + step * 1e-9, step) + 0.0


class _Plot:
  """A white canvas with one plot box mapping data coordinates to pixels."""

  def __init__(self, title: str, xlabel: str, ylabel: str, xlim: tuple[float, float],
               ylim: tuple[float, float]) -> None:
    self.im = Image.new("RGB", (_W, _H), "white")
    self.draw = ImageDraw.Draw(self.im, "RGBA")  # RGBA, so translucent fills blend
    self.xlim, self.ylim = xlim, ylim
    left, top, right, bottom = _BOX
    _text(self.draw, (_W / 2, 20), title, 16)
    _text(self.draw, ((left + right) / 2, _H - 18), xlabel)
    font = _font(13)  # the y title: drawn level, then turned
    x0, y0, x1, y1 = font.getbbox(ylabel)
    label = Image.new("RGBA", (int(x1 - x0) + 2, int(y1 - y0) + 2), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((1 - x0, 1 - y0), ylabel, fill=(0, 0, 0, 255), font=font)
    label = label.rotate(90, expand=True)
    self.im.paste(label, (18 - label.width // 2, (top + bottom - label.height) // 2), label)

  def px(self, x: float, y: float) -> tuple[float, float]:
    left, top, right, bottom = _BOX
    (x0, x1), (y0, y1) = self.xlim, self.ylim
    return (left + (x - x0) / (x1 - x0) * (right - left),
            bottom - (y - y0) / (y1 - y0) * (bottom - top))

  def axes(self, xticks: np.ndarray, yticks: np.ndarray) -> None:
    """Grid, ticks, tick labels and the frame; drawn first so data lies on top."""
    left, top, right, bottom = _BOX
    for v, s in zip(xticks, _fmt(xticks), strict=True):
      x = self.px(v, 0)[0]
      self.draw.line([(x, top), (x, bottom)], fill=(232, 232, 232))
      self.draw.line([(x, bottom), (x, bottom + 5)], fill="black")
      _text(self.draw, (x, bottom + 16), s, 12)
    for v, s in zip(yticks, _fmt(yticks), strict=True):
      y = self.px(0, v)[1]
      self.draw.line([(left, y), (right, y)], fill=(232, 232, 232))
      self.draw.line([(left - 5, y), (left, y)], fill="black")
      _text(self.draw, (left - 8, y), s, 12, align="r")
    self.draw.rectangle(_BOX, outline="black")

  def line(self, xs: np.ndarray, ys: np.ndarray, colour: tuple[int, ...], width: int = 2) -> None:
    self.draw.line([self.px(x, y) for x, y in zip(xs, ys, strict=True)], fill=colour,
                   width=width, joint="curve")

  def legend(self, entries: list[tuple[str, tuple[int, ...]]], corner: str) -> None:
    """A boxed legend in the plot's bottom-right ("br") or top-right ("tr") corner."""
    left, top, right, bottom = _BOX
    w = 40 + max(self.draw.textlength(s, font=_font(12)) for s, _ in entries)
    h = 8 + 20 * len(entries)
    x0, y0 = right - w - 10, (bottom - h - 10 if corner == "br" else top + 10)
    self.draw.rectangle([x0, y0, x0 + w, y0 + h], fill=(255, 255, 255, 230), outline=_GREY)
    for i, (s, colour) in enumerate(entries):
      yc = y0 + 14 + 20 * i
      self.draw.line([(x0 + 8, yc), (x0 + 28, yc)], fill=colour, width=3)
      _text(self.draw, (x0 + 34, yc), s, 12, align="l")


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


def _roc_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], aucs: dict[str, float],
              title: str, legend: bool) -> Image.Image:
  plot = _Plot(title, "false positive rate (normals flagged)",
               "true positive rate (anomalies caught)", (0, 1), (0, 1))
  ticks = np.linspace(0, 1, 6)
  plot.axes(ticks, ticks)
  dashes = np.linspace(0, 1, 81)  # the chance line, dashed
  for a, b in zip(dashes[0::2], dashes[1::2], strict=False):
    plot.line([a, b], [a, b], _GREY, width=1)
  order = headline_first(list(curves))
  colours = dict(zip(order, distinct_colours(len(order)), strict=True))
  for name in reversed(order):  # the headline scores drawn last, on top, and bolder
    plot.line(*curves[name], colours[name], width=3 if name in HEADLINE else 2)
  if legend:
    plot.legend([(f"{k} ({aucs[k]:.3f})", colours[k]) for k in order], "br")
  return plot.im


def headline_first(names: list[str]) -> list[str]:
  """The headline scores in their order, then the rest in theirs."""
  return [n for n in HEADLINE if n in names] + [n for n in names if n not in HEADLINE]


def distinct_colours(n: int) -> list[tuple[int, int, int]]:
  """n different colours: the 20 of the palette, then hues spread around the wheel."""
  out = list(_PALETTE[:n])
  for i in range(n - len(out)):
    hue = (i * 0.618034) % 1.0  # golden-ratio steps keep neighbours far apart
    value = 0.55 if i % 2 else 0.8
    rgb = tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 0.9, value))
    while rgb in out:  # never a repeat, however many scores
      rgb = (rgb[0], rgb[1], (rgb[2] + 1) % 256)
    out.append(rgb)
  return out


def _hist_plot(name: str, s: np.ndarray, y: np.ndarray, auc: float) -> Image.Image:
  """Class-wise score densities on shared bins; outliers beyond 0.5/99.5% join the end bins."""
  lo, hi = np.quantile(s, [0.005, 0.995])
  if hi - lo <= 1e-12 * max(1.0, abs(lo)):
    lo, hi = lo - 0.5, hi + 0.5
  edges = np.linspace(lo, hi, 41)
  clipped = np.clip(s, lo, hi)
  dens = [np.histogram(clipped[m], edges, density=True)[0] for m in (~y, y)]
  ymax = 1.1 * max(d.max() for d in dens)
  plot = _Plot(f"{name}: scores by class (AUROC {auc:.3f})", "score", "density",
               (lo, hi), (0, ymax))
  plot.axes(_ticks(lo, hi), _ticks(0, ymax, 5))
  for d, colour in zip(dens, (_BLUE, _ORANGE), strict=True):
    for e0, e1, v in zip(edges[:-1], edges[1:], d, strict=True):
      if v > 0:
        plot.draw.rectangle([plot.px(e0, v), plot.px(e1, 0)], fill=(*colour, 70))
    plot.line(np.repeat(edges, 2), np.r_[0, np.repeat(d, 2), 0], colour)
  n_a = int(y.sum())
  plot.legend([(f"normal (n={y.size - n_a})", _BLUE), (f"anomaly (n={n_a})", _ORANGE)], "tr")
  return plot.im


def _colours(t: np.ndarray) -> np.ndarray:
  """Blue -> yellow -> red for t in [0, 1], as float RGB in [0, 255], shape t.shape + (3,)."""
  return np.stack([np.interp(t, [0, 0.5, 1], _RAMP[:, c]) for c in range(3)], axis=-1)


def _select(score: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices of the k highest scores (highest first) and k lowest (lowest first)."""
  order = np.argsort(-np.asarray(score, np.float64), kind="stable")
  k = min(k, order.size)
  return order[:k], order[::-1][:k]


def _tile(image: np.ndarray, dmap: np.ndarray, vmin: float, vmax: float) -> Image.Image:
  """The image (nearest) under its map (bilinear), both at tile size, blended 50/50."""
  if np.issubdtype(image.dtype, np.floating):
    image = np.clip(image, 0, 1) * 255 + 0.5
  image = np.clip(image, 0, 255).astype(np.uint8)
  base = np.asarray(Image.fromarray(image).resize((_TILE, _TILE), Image.NEAREST))
  up = np.asarray(Image.fromarray(dmap.astype(np.float32)).resize((_TILE, _TILE), Image.BILINEAR))
  t = np.clip((up - vmin) / (vmax - vmin), 0, 1) if vmax > vmin else np.full(up.shape, 0.5)
  return Image.fromarray((0.5 * base + 0.5 * _colours(t) + 0.5).astype(np.uint8))


def _heatmap_plot(images: np.ndarray, dmaps: np.ndarray, score: np.ndarray, y: np.ndarray,
                  rows: tuple[np.ndarray, np.ndarray], title: str) -> Image.Image:
  """Most (top row) and least anomalous images, tinted by one colour range for all tiles."""
  dmaps = np.asarray(dmaps, np.float64).reshape(np.shape(dmaps)[:3])  # drop a channel of 1
  vmin, vmax = np.percentile(dmaps[np.concatenate(rows)], [1, 99])
  step, pad = _TILE + 8, 12
  w = max(2 * pad + len(rows[0]) * step - 8, 480)
  im = Image.new("RGB", (w, 40 + 2 * (_TILE + 40) + 44), "white")
  draw = ImageDraw.Draw(im)
  _text(draw, (w / 2, 18), title, 15)
  y0 = 40
  for label, idx in zip(("most anomalous", "least anomalous"), rows, strict=True):
    _text(draw, (pad, y0 + 10), label, 13, align="l")
    for j, i in enumerate(idx):
      x = pad + j * step
      im.paste(_tile(images[i], dmaps[i], vmin, vmax), (x, y0 + 20))
      _text(draw, (x + _TILE / 2, y0 + _TILE + 30), f"{_num(score[i])} {'A' if y[i] else 'N'}", 11)
    y0 += _TILE + 40
  bar = _colours(np.linspace(0, 1, 200))[None].repeat(12, 0).astype(np.uint8)
  im.paste(Image.fromarray(bar), (pad + 70, y0 + 8))
  _text(draw, (pad + 64, y0 + 14), _num(vmin), 11, align="r")
  _text(draw, (pad + 276, y0 + 14), f"{_num(vmax)}  deviation (1st-99th pct of shown maps)", 11,
        align="l")
  return im


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
                 rank_by: str | None = None, num_examples: int = 8) -> list[str]:
  """Writes the report's PNGs into out_dir and returns their paths, in a stable order.

  Files: roc_<name>.png per score, roc_all.png, hist_<name>.png per score and, only if both
  images and maps are given, heatmaps_<scale>.png per map scale, ranked by scores[rank_by]
  (default: the first score). Names are made file-safe (see `_file_names`); a score named
  "all" is written as roc_all_2.png so it cannot overwrite roc_all.png.
  """
  rank_by = next(iter(scores), None) if rank_by is None else rank_by
  y = _check(scores, is_anomaly, images, maps, rank_by)
  os.makedirs(out_dir, exist_ok=True)
  names = _file_names(list(scores), reserved=("all",))
  s = {k: np.asarray(v, np.float64) for k, v in scores.items()}
  aucs = {k: metrics.auroc(v, y) for k, v in s.items()}
  curves = {k: _roc_curve(v, y) for k, v in s.items()}
  paths = []

  def save(im: Image.Image, file_name: str) -> None:
    paths.append(os.path.join(out_dir, file_name))
    im.save(paths[-1])

  for k in s:
    save(_roc_plot({k: curves[k]}, aucs, f"{k}: AUROC {aucs[k]:.3f}", legend=False),
         f"roc_{names[k]}.png")
  save(_roc_plot(curves, aucs, "ROC, all scores", legend=True), "roc_all.png")
  for k in s:
    save(_hist_plot(k, s[k], y, aucs[k]), f"hist_{names[k]}.png")
  if images is not None and maps is not None:
    rows = _select(s[rank_by], max(1, num_examples))
    for c, c_name in _file_names(list(maps)).items():
      save(_heatmap_plot(np.asarray(images), maps[c], s[rank_by], y, rows,
                         f"deviation maps, scale {c}, ranked by {rank_by}"),
           f"heatmaps_{c_name}.png")
  return paths
