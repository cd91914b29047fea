"""Inpainting condition plugin (``inpaint``): masked image latents + mask, pasted back after."""

from ldm_inpaint.encoder import InpaintEncoder
from ldmcore.hookspecs import hookimpl

__all__ = ["InpaintEncoder"]


@hookimpl
def register_conditions(register):
    register(InpaintEncoder)
