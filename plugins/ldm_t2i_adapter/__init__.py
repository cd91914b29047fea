"""T2I-Adapter condition plugin (``t2i_adapter``): multi-scale features of a hint map added to
the backbone's encoder features, one map per level (the ``residual`` injection)."""

from ldm_controlnet.metric import scene_miou
from ldm_t2i_adapter.encoder import T2IAdapterEncoder
from ldmcore.hookspecs import hookimpl

__all__ = ["T2IAdapterEncoder"]


@hookimpl
def register_conditions(register):
    register(T2IAdapterEncoder)


@hookimpl
def register_metrics(register):
    register(T2IAdapterEncoder.name, scene_miou, datasets=("shapes",), reads_data=True)
