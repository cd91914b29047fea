"""ldm-plugin-edges: Canny edge maps as a condition, injected by channel concatenation.

The package is a plugin through one entry point (``[project.entry-points.ldmcore]`` in its
pyproject.toml) naming this module, which implements two hooks: ``register_conditions`` (the
encoder) and ``register_config_dirs`` (its Hydra configs: ``condition/edges.yaml`` and
``experiment/shapes_edges.yaml``).
"""

from __future__ import annotations

from importlib.resources import files

from ldmcore.hookspecs import hookimpl
from ldm_edges.encoder import EdgesConfig, EdgesEncoder, canny, load_edge_map

__all__ = ["EdgesConfig", "EdgesEncoder", "canny", "load_edge_map"]


@hookimpl
def register_conditions(register):
    register(EdgesEncoder)


@hookimpl
def register_config_dirs(register):
    register(files("ldm_edges") / "conf")
