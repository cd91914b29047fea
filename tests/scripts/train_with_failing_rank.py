"""Run `ldm train` under torchrun with a plugin that fails on rank 1 only (for test_distributed)."""

import os
import sys

import torch

import ldmcore.registry as registry_module
from ldmcore.cli import main
from ldmcore.conditioning import BackboneSpec, ConditionEncoder, EncoderConfig, Injection, OutputSpec
from ldmcore.errors import DataError
from ldmcore.hookspecs import hookimpl


class RankCheck(ConditionEncoder):
    """A vector condition whose encoder cannot read its data on rank 1."""

    name = "rank_check"
    injections = (Injection.VECTOR,)
    Config = EncoderConfig

    def __init__(self, config: EncoderConfig, backbone: BackboneSpec) -> None:
        super().__init__(config, backbone)
        self.null_vec = torch.nn.Parameter(torch.zeros(4))

    def output_specs(self):
        return {Injection.VECTOR: OutputSpec(Injection.VECTOR, (4,))}

    def batch_value(self, batch):
        return batch["image"]

    def forward(self, value):
        if os.environ.get("RANK") == "1":
            raise DataError("rank 1 cannot read its shard of the rank_check condition")
        return {Injection.VECTOR: value.flatten(1)[:, :4].to(self.null_vec)}

    def null(self, batch_size):
        return {Injection.VECTOR: self.null_vec.expand(batch_size, -1)}


class Plugin:
    @hookimpl
    def register_conditions(self, register):
        register(RankCheck)


registry = registry_module.build_registry()
registry.add_module(Plugin(), package="test-rank-check")
registry_module._default = registry
sys.exit(main(["train", *sys.argv[1:], "+conditions.rank_check.drop_prob=0.0"]))
