"""Class labels as a vector added to the timestep embedding, or as one cross-attention token.

The null condition is a learned extra embedding row (index ``num_classes``), so the
unconditional branch of guidance is trained by label dropout and saved with the weights.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from ldmcore.conditioning import (BackboneSpec, ConditionEncoder, ConditionOutput, EncoderConfig,
                                  Injection, OutputSpec, Tokens, Widget, WidgetKind)
from ldmcore.errors import ConfigError


class ClassConfig(EncoderConfig):
    num_classes: int = Field(10, ge=1)
    injection: Literal["vector", "crossattn"] = "vector"
    embed_dim: int = Field(128, ge=1, description="vector width (vector injection only)")


class ClassEncoder(ConditionEncoder):
    name = "class"
    injections = (Injection.VECTOR, Injection.CROSSATTN)
    Config = ClassConfig

    def __init__(self, config: ClassConfig, backbone: BackboneSpec) -> None:
        super().__init__(config, backbone)
        self.injection = Injection(config.injection)
        width = config.embed_dim if self.injection is Injection.VECTOR else backbone.context_dim
        self.embedding = nn.Embedding(config.num_classes + 1, width)  # last row: null class
        nn.init.normal_(self.embedding.weight, std=0.02 if self.injection is Injection.VECTOR else 1.0)

    def output_specs(self) -> dict[Injection, OutputSpec]:
        width = self.embedding.embedding_dim
        shape = (width,) if self.injection is Injection.VECTOR else (1, width)
        return {self.injection: OutputSpec(self.injection, shape)}

    def _emit(self, labels: torch.Tensor) -> ConditionOutput:
        emb = self.embedding(labels.to(self.embedding.weight.device).long())
        if self.injection is Injection.VECTOR:
            return {Injection.VECTOR: emb}
        mask = torch.ones(emb.shape[0], 1, dtype=torch.bool, device=emb.device)
        return {Injection.CROSSATTN: Tokens(emb[:, None], mask)}

    def forward(self, value: torch.Tensor) -> ConditionOutput:
        labels = torch.as_tensor(value)
        n = self.config.num_classes
        if labels.numel() and (labels.min() < 0 or labels.max() >= n):
            bad = labels[(labels < 0) | (labels >= n)][0].item()
            raise ConfigError(f"class label {bad} is out of range: this model knows classes "
                              f"0..{n - 1} (conditions.class.num_classes={n}).")
        return self._emit(labels)

    def null(self, batch_size: int) -> ConditionOutput:
        return self._emit(torch.full((batch_size,), self.config.num_classes, dtype=torch.long))

    def widget(self) -> Widget:
        return Widget(WidgetKind.CHOICE, label="class", help="the class label to sample",
                      choices=tuple(str(c) for c in range(self.config.num_classes)), default="0")

    @classmethod
    def parse(cls, value: Any) -> torch.Tensor:
        if isinstance(value, int) and not isinstance(value, bool):
            return torch.tensor(value)
        try:
            return torch.tensor(int(str(value).strip()))
        except ValueError:
            raise ConfigError(f"cond.class={value!r} is not a class label; write an integer "
                              f"such as cond.class=3, or a list such as cond.class=[0,1,2].") from None
