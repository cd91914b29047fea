"""ControlNet condition plugin (``controlnet``): a trainable copy of the backbone's encoder half
whose zero-initialised outputs are added to the skip connections (the ``residual`` injection)."""

from ldm_controlnet.encoder import ControlNetEncoder
from ldm_controlnet.metric import scene_miou
from ldmcore.hookspecs import hookimpl

__all__ = ["ControlNetEncoder"]


@hookimpl
def register_conditions(register):
    register(ControlNetEncoder)


@hookimpl
def register_metrics(register):
    register(ControlNetEncoder.name, scene_miou, datasets=("shapes",), reads_data=True)
