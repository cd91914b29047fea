"""Layout condition plugin (``layout``): boxes with class labels as cross-attention tokens."""

from ldm_layout.encoder import LayoutEncoder
from ldmcore.hookspecs import hookimpl

__all__ = ["LayoutEncoder"]


@hookimpl
def register_conditions(register):
    register(LayoutEncoder)
