"""ldmcore: latent diffusion (Rombach et al. 2022) with a fixed backbone and plugin conditions."""

from ldmcore.conditioning import (BackboneSpec, ConditionEncoder, Conditioner, Conditioning,
                                  EncoderConfig, Injection, OutputSpec, Tokens)
from ldmcore.errors import LdmError
from ldmcore.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "BackboneSpec", "ConditionEncoder", "Conditioner", "Conditioning", "EncoderConfig",
    "Injection", "LdmError", "OutputSpec", "Tokens", "hookimpl", "__version__",
]
