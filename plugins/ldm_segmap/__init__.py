"""Semantic-map condition plugin (``segmap``): a class map concatenated at latent resolution."""

from ldm_segmap.encoder import SegmapEncoder
from ldm_segmap.metric import map_miou
from ldmcore.hookspecs import hookimpl

__all__ = ["SegmapEncoder"]


@hookimpl
def register_conditions(register):
    register(SegmapEncoder)


@hookimpl
def register_metrics(register):
    register(SegmapEncoder.name, map_miou, datasets=("shapes",))
