"""Low-resolution image condition plugin (``lowres``): super-resolution by concat + vector
(including Stable Diffusion x4 upscaler checkpoints: see ``encoder.py``)."""

from ldm_lowres.encoder import LowresEncoder
from ldmcore.hookspecs import hookimpl

__all__ = ["LowresEncoder"]


@hookimpl
def register_conditions(register):
    register(LowresEncoder)
