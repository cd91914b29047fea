"""Layout condition plugin (``layout``): boxes with class labels as cross-attention tokens."""

from ldm_layout.encoder import LayoutEncoder
from ldm_layout.metric import box_iou_mean
from ldmcore.hookspecs import hookimpl

__all__ = ["LayoutEncoder"]


@hookimpl
def register_conditions(register):
    register(LayoutEncoder)


@hookimpl
def register_metrics(register):
    register(LayoutEncoder.name, box_iou_mean, datasets=("shapes",))
