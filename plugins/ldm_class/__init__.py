"""Class-label condition plugin (``class``): a learned embedding per label plus a null class."""

from ldmcore.hookspecs import hookimpl
from ldm_class.encoder import ClassEncoder
from ldm_class.metric import digit_fidelity

__all__ = ["ClassEncoder"]


@hookimpl
def register_conditions(register):
    register(ClassEncoder)


@hookimpl
def register_metrics(register):
    register(ClassEncoder.name, digit_fidelity, datasets=("digits",))
