"""Names the config and the models share, in a module without JAX.

The config is checked before JAX is imported, so that a mistyped field is reported
within a second instead of after the accelerator runtime has started.
"""

STAGE_NAMES: tuple[str, str, str, str] = ("res1", "res2", "res3", "res4")
SCALES: tuple[str, ...] = STAGE_NAMES + ("pooled",)
MEMORY_MODES: tuple[str, ...] = ("replace", "residual", "branch")
MEMORY_TRAIN: tuple[str, ...] = ("contrastive", "codebook")
DEVIATIONS: tuple[str, ...] = ("cosine", "similarity", "euclidean", "difference", "feature")
# The scores a reader looks at first (evaluate's docstring): tables and plots lead with them.
HEADLINE: tuple[str, ...] = ("mscm", "deviation", "knn", "pixel_knn")
# The stage-1 probe's keys in metrics.jsonl and results.json: read on the validation split.
PROBE_KEYS: tuple[str, str] = ("validation_probe_knn_auroc",
                               "validation_probe_untrained_knn_auroc")


def test_scores(results: dict) -> dict:
  """The test split's metrics of a results.json (named `scores` before the validation
  split existed; `validation_scores` holds the validation split's)."""
  return results["test_scores"] if "test_scores" in results else results["scores"]


def split_scores(results: dict, split: str) -> dict:
  """One split's metrics of a results.json: `validation` (where choices are read; {} for a
  run without a validation split) or `test` (the final numbers)."""
  if split == "test":
    return test_scores(results)
  return results.get("validation_scores") or {}
