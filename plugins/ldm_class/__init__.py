"""Class-label condition plugin (``class``): a learned embedding per label plus a null class."""

from ldmcore.hookspecs import hookimpl
from ldm_class.encoder import ClassEncoder

__all__ = ["ClassEncoder"]


@hookimpl
def register_conditions(register):
    register(ClassEncoder)
