"""ldm-plugin-edges: Canny edge maps as a condition, injected by channel concatenation.

The package is a plugin through one entry point (``[project.entry-points.ldmcore]`` in its
pyproject.toml) naming this module, which implements three hooks: ``register_conditions`` (the
encoder), ``register_config_dirs`` (its Hydra configs: ``condition/edges.yaml`` and
``experiment/shapes_edges.yaml``) and ``register_metrics`` (``ldm eval``'s edge agreement).
"""

from __future__ import annotations

from importlib.resources import files

from ldmcore.hookspecs import hookimpl
from ldm_edges.encoder import EdgesConfig, EdgesEncoder, canny, load_edge_map
from ldm_edges.metric import edge_agreement

__all__ = ["EdgesConfig", "EdgesEncoder", "canny", "edge_agreement", "load_edge_map"]


@hookimpl
def register_conditions(register):
    register(EdgesEncoder)


@hookimpl
def register_config_dirs(register):
    register(files("ldm_edges") / "conf")


@hookimpl
def register_metrics(register):
    register(EdgesEncoder.name, edge_agreement)
