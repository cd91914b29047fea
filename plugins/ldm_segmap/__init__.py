"""Semantic-map condition plugin (``segmap``): a class map concatenated at latent resolution."""

from ldm_segmap.encoder import SegmapEncoder
from ldmcore.hookspecs import hookimpl

__all__ = ["SegmapEncoder"]


@hookimpl
def register_conditions(register):
    register(SegmapEncoder)
