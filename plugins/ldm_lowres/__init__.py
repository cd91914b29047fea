"""Low-resolution image condition plugin (``lowres``): super-resolution by concat + vector
(including Stable Diffusion x4 upscaler checkpoints: see ``encoder.py``)."""

from ldm_lowres.encoder import LowresEncoder
from ldm_lowres.metric import bicubic, bicubic_caption_match, caption_match, fidelity
from ldmcore.hookspecs import hookimpl

__all__ = ["LowresEncoder"]


@hookimpl
def register_conditions(register):
    register(LowresEncoder)


@hookimpl
def register_metrics(register):
    register(LowresEncoder.name, fidelity, baseline=bicubic, averages=True, reads_data=True)
    register(LowresEncoder.name, caption_match, baseline=bicubic_caption_match, datasets=("shapes",),
             reads_data=True)
