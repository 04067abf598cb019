"""mscm_jax: AnoMem (Anomaly Detection via Multi-Scale Contrasted Memory) in JAX/Flax.

Importing the package has no side effects; the pieces live in submodules
(`mscm_jax.data`, `mscm_jax.config`, `mscm_jax.pipeline`, ...).
"""

__version__ = "0.1.0"
