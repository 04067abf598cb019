"""Names the config and the models share, in a module without JAX.

The config is checked before JAX is imported, so that a mistyped field is reported
within a second instead of after the accelerator runtime has started.
"""

STAGE_NAMES: tuple[str, str, str, str] = ("res1", "res2", "res3", "res4")
SCALES: tuple[str, ...] = STAGE_NAMES + ("pooled",)
MEMORY_MODES: tuple[str, ...] = ("replace", "residual", "branch")
MEMORY_TRAIN: tuple[str, ...] = ("contrastive", "codebook")
# The stage-2 detector's input kinds (`stage2.inputs`), each a function of f and r.
INPUT_KINDS: tuple[str, ...] = ("cosine_distance", "cosine_similarity", "squared_distance",
                                "difference", "feature")
# Old names a saved config.json or a command may still hold. On a command line each is a
# one-line error naming the new one; a saved config.json's is read under the new name when
# the field is operational (`identity.OPERATIONAL`: it changes no result), else refused.
RENAMED_FIELDS: dict[str, str] = {"stage2.deviation": "stage2.inputs",
                                  "evaluate.batch_size": "frozen.batch_size"}
RENAMED_KINDS: dict[str, str] = {"cosine": "cosine_distance", "similarity": "cosine_similarity",
                                 "euclidean": "squared_distance"}


def renamed_hint(field: str) -> str:
  """' (renamed NEW)' when `field` (dotted, or its last part) is an old name; else ''."""
  for old, new in RENAMED_FIELDS.items():
    if field in (old, old.rsplit(".", 1)[-1]):
      return f" ({old} was renamed {new})"
  return ""
# The scores a reader looks at first (evaluate's docstring): tables and plots lead with them.
HEADLINE: tuple[str, ...] = ("mscm", "detector", "deviation", "knn", "pixel_knn")
# The stage-1 probe's keys in metrics.jsonl and results.json: read on the validation split.
PROBE_KEYS: tuple[str, str] = ("validation_probe_knn_auroc",
                               "validation_probe_untrained_knn_auroc")


def test_scores(results: dict) -> dict:
  """The test split's metrics of a results.json (named `scores` before the validation
  split existed; `validation_scores` holds the validation split's), under today's names."""
  return current_names(results["test_scores"] if "test_scores" in results
                       else results["scores"])


def current_names(scores: dict) -> dict:
  """One split's metrics under today's score names. A run scored before `detector` existed
  called the detectors' sum `mscm` (today's `mscm` adds the k-NN term to it): its `mscm` is
  today's `detector`, and it has no `mscm`, so that no table averages the two."""
  if "mscm" in scores and "detector" not in scores:
    return {("detector" if k == "mscm" else k): v for k, v in scores.items()}
  return scores


def split_scores(results: dict, split: str) -> dict:
  """One split's metrics of a results.json: `validation` (where choices are read; {} for a
  run without a validation split) or `test` (the final numbers; {} for a run stopped
  before its evaluation)."""
  if split == "test":
    return test_scores(results) if {"test_scores", "scores"} & set(results) else {}
  return current_names(results.get("validation_scores") or {})
