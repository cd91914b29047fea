"""Text condition plugin (``text``): a frozen ``transformers`` text encoder, cross-attention."""

from ldmcore.hookspecs import hookimpl
from ldm_text.encoder import TextEncoder

__all__ = ["TextEncoder"]


@hookimpl
def register_conditions(register):
    register(TextEncoder)
