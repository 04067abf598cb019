"""Names the config and the models share, in a module without JAX.

The config is checked before JAX is imported, so that a mistyped field is reported
within a second instead of after the accelerator runtime has started.
"""

STAGE_NAMES: tuple[str, str, str, str] = ("res1", "res2", "res3", "res4")
SCALES: tuple[str, ...] = STAGE_NAMES + ("pooled",)
MEMORY_MODES: tuple[str, ...] = ("replace", "residual", "branch")
MEMORY_TRAIN: tuple[str, ...] = ("contrastive", "codebook")
DEVIATIONS: tuple[str, ...] = ("cosine", "similarity", "euclidean", "difference")
# The scores a reader looks at first (evaluate's docstring): tables and plots lead with them.
HEADLINE: tuple[str, ...] = ("mscm", "deviation", "knn", "pixel_knn")
