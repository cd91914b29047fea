"""Low-resolution image condition plugin (``lowres``): super-resolution by concat + vector."""

from ldm_lowres.encoder import LowresEncoder
from ldmcore.hookspecs import hookimpl

__all__ = ["LowresEncoder"]


@hookimpl
def register_conditions(register):
    register(LowresEncoder)
