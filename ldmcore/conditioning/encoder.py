"""The condition-encoder contract: what a plugin declares and the network it runs (job 3).

A condition plugin is a ``ConditionEncoder`` subclass. Its hooks fall into four jobs, each
declared and documented in its own module:

1. reading a person's value: ``parse``, ``collate``, ``list_value`` (``user_input.py``);
2. finding its value in a batch of data: ``batch_value`` (``batch_input.py``);
3. the network, here: ``name``, ``injections``, ``Config``, ``trainable``, ``output_specs``,
   ``forward``, ``null`` (and the provided ``random()``);
4. shaping the sample, optionally: ``provides_base``, ``base``, ``loss_weight``, ``finish``
   (``sample_shaping.py``);
5. for ``gated_attention`` and ``decoupled_crossattn`` only: the layers it inserts into the
   transformer blocks, ``block_layers`` (``block_layers.py``).

Only job 3 has no default: ``output_specs``, ``forward`` and ``null`` are what every plugin
writes; the other jobs' defaults fit a plugin whose value is a tensor stored under its name.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ldmcore.conditioning.backbone import BackboneSpec
from ldmcore.conditioning.batch_input import BatchInput
from ldmcore.conditioning.block_layers import BlockLayers
from ldmcore.conditioning.injection import ConditionOutput, Injection, OutputSpec
from ldmcore.conditioning.sample_shaping import SampleShaping
from ldmcore.conditioning.user_input import UserInput
from ldmcore.randomness import BatchRandom


class EncoderConfig(BaseModel):
    """Base of every plugin's config: unknown keys are errors, and so are NaN and infinity."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    drop_prob: float = Field(0.1, ge=0.0, le=1.0, description="train-time probability of null")


class ConditionEncoder(UserInput, BatchInput, SampleShaping, BlockLayers, nn.Module):
    """Base class of condition plugins. Subclasses set the class attributes and implement
    ``output_specs``, ``forward`` and ``null``; every other hook has a default."""

    name: ClassVar[str]
    """The key it reads from a batch and from a sampling request (``cond.NAME=``), and its
    config section (``conditions.NAME``)."""
    injections: ClassVar[tuple[Injection, ...]]
    """The ways it *can* feed the backbone; ``output_specs()`` says which it does."""
    Config: ClassVar[type[EncoderConfig]] = EncoderConfig
    """Its own pydantic model (unknown keys are errors), with ``drop_prob`` for guidance."""
    trainable: ClassVar[bool] = True
    """False: a frozen encoder, run under ``no_grad``, its parameters never trained."""

    def __init__(self, config: EncoderConfig, backbone: BackboneSpec) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self._random: BatchRandom | None = None

    def random(self) -> BatchRandom:
        """The source of this call's train-time randomness (augmentation, random holes, noise
        levels). Draw every random number through it (``randn``, ``rand``, ``randint``, first axis
        = local batch): the ``Conditioner`` hands in the training step's seeded generator, so a
        resumed run draws the same numbers and N data-parallel processes draw the rows one process
        would. Outside a training step it falls back to torch's global generator."""
        return self._random if self._random is not None else BatchRandom()

    def output_specs(self) -> dict[Injection, OutputSpec]:
        """Which injections this instance feeds, and the per-sample shape of each: routing is
        declared, and the backbone derives its input channels, context and vector widths from
        these."""
        raise NotImplementedError

    def forward(self, value: Any) -> ConditionOutput:
        """Encode a batch of values (from ``batch_value`` or ``collate``) into outputs per
        injection, shaped as ``output_specs`` says."""
        raise NotImplementedError

    def null(self, batch_size: int) -> ConditionOutput:
        """The unconditional outputs for ``batch_size`` samples (same shapes as ``forward``):
        classifier-free guidance's null and the train-time dropout value."""
        raise NotImplementedError

    @property
    def guided(self) -> bool:
        """True: classifier-free guidance contrasts this condition with its null (the default).
        False: every guidance branch gets it, the unconditional one included, so it steers
        without being amplified by the guidance scale and takes no scale of its own (as
        diffusers' ControlNet pipelines treat a ControlNet outside guess mode)."""
        return True

    def init_from_backbone(self, unet: nn.Module) -> None:
        """Called with the backbone's UNet once the model is built, and again after a pretrained
        backbone's weights are loaded into it (``model.init_from``, ``ldmcore.attach``). A plugin
        that builds on the backbone's weights makes its part here and copies them (ControlNet:
        a trainable copy of the encoder half); what it makes is its own, saved with it, and the
        UNet itself must stay untouched. Default: nothing."""
