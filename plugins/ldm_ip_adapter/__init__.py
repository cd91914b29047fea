"""Image prompt plugin (``ip_adapter``): a reference image's tokens read by a decoupled
key/value path in every cross-attention layer (IP-Adapter)."""

from ldm_ip_adapter.encoder import IPAdapterEncoder
from ldm_ip_adapter.metric import reference_agreement
from ldmcore.hookspecs import hookimpl

__all__ = ["IPAdapterEncoder"]


@hookimpl
def register_conditions(register):
    register(IPAdapterEncoder)


@hookimpl
def register_metrics(register):
    register(IPAdapterEncoder.name, reference_agreement, datasets=("shapes",), against_null=True)
