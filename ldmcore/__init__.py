"""ldmcore: latent diffusion (Rombach et al. 2022) with a fixed backbone and plugin conditions."""

from ldmcore.conditioning import (BackboneSpec, ConditionEncoder, Conditioner, Conditioning,
                                  EncoderConfig, Injection, OutputSpec, Residual, Tokens)
from ldmcore.errors import LdmError
from ldmcore.hookspecs import hookimpl

__version__ = "0.1.0"


def from_pretrained(path, **options):
    """A ``LatentDiffusion`` from a run folder, an SD ``.safetensors`` file or a diffusers folder
    (see ``ldmcore.interop.convert.from_pretrained``)."""
    from ldmcore.interop.convert import from_pretrained as load

    return load(path, **options)

__all__ = [
    "BackboneSpec", "ConditionEncoder", "Conditioner", "Conditioning", "EncoderConfig",
    "Injection", "LdmError", "OutputSpec", "Residual", "Tokens", "from_pretrained", "hookimpl",
    "__version__",
]
