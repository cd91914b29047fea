"""Text condition plugin (``text``): a frozen ``transformers`` text encoder, cross-attention."""

from ldmcore.hookspecs import hookimpl
from ldm_text.encoder import TextEncoder
from ldm_text.metric import caption_match_rate

__all__ = ["TextEncoder"]


@hookimpl
def register_conditions(register):
    register(TextEncoder)


@hookimpl
def register_metrics(register):
    register(TextEncoder.name, caption_match_rate, datasets=("shapes",))
