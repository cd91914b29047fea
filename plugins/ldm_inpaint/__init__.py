"""Inpainting condition plugin (``inpaint``): masked image latents + mask, pasted back after."""

from ldm_inpaint.encoder import InpaintEncoder
from ldm_inpaint.metric import (blur_fill_baseline, blur_fill_caption_match, caption_match, hole_fidelity,
                                known_region_error)
from ldmcore.hookspecs import hookimpl

__all__ = ["InpaintEncoder"]


@hookimpl
def register_conditions(register):
    register(InpaintEncoder)


@hookimpl
def register_metrics(register):
    register(InpaintEncoder.name, hole_fidelity, baseline=blur_fill_baseline, averages=True)
    register(InpaintEncoder.name, known_region_error)
    register(InpaintEncoder.name, caption_match, baseline=blur_fill_caption_match, datasets=("shapes",),
             reads_data=True)
