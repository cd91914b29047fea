"""The plugin contract: what a condition plugin declares, and the Conditioner that routes it.

A plugin subclasses ``ConditionEncoder``. Its hooks are grouped by job, one module each:
``user_input`` (a person's value -> ``parse``, ``collate``; the page's input -> ``widget``),
``batch_input`` (a data batch -> ``batch_value``), ``encoder`` (the network: ``output_specs``,
``forward``, ``null``) and ``sample_shaping`` (``base``, ``loss_weight``, ``finish``). ``injection`` holds the
doors to the UNet and the shapes that cross them (``residual``: the maps added at the UNet's
taps), ``backbone`` what the backbone tells a plugin, ``conditioner`` the routing. Import the
public names from here.
"""

from ldmcore.conditioning.backbone import BackboneSpec
from ldmcore.conditioning.conditioner import Conditioner
from ldmcore.conditioning.encoder import ConditionEncoder, EncoderConfig
from ldmcore.conditioning.injection import (ConditionOutput, Conditioning, Injection, OutputSpec,
                                            Tokens)
from ldmcore.conditioning.residual import Residual, UNetInput
from ldmcore.conditioning.user_input import FILE_KINDS, Widget, WidgetKind, read_value
from ldmcore.nn.taps import ResidualTap

__all__ = ["BackboneSpec", "ConditionEncoder", "ConditionOutput", "Conditioner", "Conditioning",
           "EncoderConfig", "FILE_KINDS", "Injection", "OutputSpec", "Residual", "ResidualTap",
           "Tokens", "UNetInput", "Widget", "WidgetKind", "read_value"]
