"""Boxes (x0, y0, x1, y1 in [0, 1]) with class labels, one token per box, in one of two ways.

``injection: crossattn`` (default): as GLIGEN's position net, each token is an MLP of [class
embedding | Fourier features of the box coordinates], projected to the backbone's context
width and appended to the cross-attention context. Up to ``max_boxes`` boxes; empty slots are
masked out of attention. A learned null token is always present and attended (so a sample with
no boxes still has one key), and is the whole condition when the layout is dropped.

``injection: gated``: GLIGEN itself. The tokens (``ldmcore.nn.grounding``: the class embedding
as the phrase, GLIGEN's box Fourier features, learned null features for empty slots) are read
by a gated self-attention layer the plugin inserts after the self-attention of every transformer
block (``ldmcore.nn.gated_attention``), gates shut at init. Attached to a pretrained model
(``model.init_from``) the output is unchanged until training opens the gates, which
cross-attention tokens cannot promise (softmax renormalises over the added keys). The dropped
layout is every slot empty (null features). ``scheduled_sampling_beta`` < 1 switches the gated
layers off after that fraction of the sampling steps (GLIGEN's scheduled sampling: the boxes
place things early, the backbone alone refines them).

Labels are classes of a learned table (``num_classes`` x ``embed_dim``), or, with
``phrase_model=PATH``, free phrases embedded by a frozen local text model (``phrases.py``), as
GLIGEN embeds its grounding phrases; a class index then names ``class_names[index]``.

A value is a pair (boxes (N, 4), labels (N,)) per sample, N varying within a batch.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from ldm_layout.phrases import PhraseEncoder
from ldmcore.conditioning import (BackboneSpec, ConditionEncoder, ConditionOutput, EncoderConfig,
                                  Injection, OutputSpec, Tokens, Widget, WidgetKind)
from ldmcore.errors import ConfigError
from ldmcore.nn.embeddings import FourierFeatures
from ldmcore.nn.gated_attention import gated_layers
from ldmcore.nn.grounding import GroundingTokenizer


class LayoutConfig(EncoderConfig):
    boxes_key: str = Field("bboxes", description="the data key of the boxes (N, 4) when a batch "
                                                 "has no layout under the plugin's name")
    labels_key: str = Field("labels", description="the data key of the boxes' class labels")
    num_classes: int = Field(3, ge=1)
    class_names: tuple[str, ...] = ("circle", "square", "triangle")
    max_boxes: int = Field(4, ge=1)
    num_freqs: int = Field(8, ge=1)
    embed_dim: int = Field(128, ge=1)
    injection: Literal["crossattn", "gated"] = Field(
        "crossattn", description="crossattn: tokens appended to the context; gated: GLIGEN's "
                                 "gated self-attention in every transformer block (output "
                                 "unchanged at init when attached to a pretrained model)")
    grounding_hidden: int = Field(512, ge=1, description="gated: width of the grounding "
                                                         "tokenizer's MLP (GLIGEN: 512)")
    position_freqs: int = Field(0, ge=0, description="gated: Fourier frequencies of each visual "
                                "token's place added to what the gated layers' attention reads "
                                "(0 = GLIGEN as published; use it when the backbone's features "
                                "say little about where a token lies, e.g. small latents)")
    phrase_model: str | None = Field(
        None, description="a local transformers text model folder (CLIP): each box's label is a "
                          "phrase embedded with it (its pooled output, as GLIGEN embeds phrases), "
                          "so labels may be any text; default: the classes of a learned table")
    scheduled_sampling_beta: float = Field(
        1.0, gt=0.0, le=1.0, description="gated: the fraction of sampling steps, from the first, in "
                                         "which the gated layers act (GLIGEN's scheduled sampling; "
                                         "its pipeline uses 0.3); 1: every step")


class LayoutEncoder(ConditionEncoder):
    name = "layout"
    injections = (Injection.CROSSATTN, Injection.GATED_ATTENTION)
    Config = LayoutConfig
    list_value = True

    def __init__(self, config: LayoutConfig, backbone: BackboneSpec) -> None:
        super().__init__(config, backbone)
        self.gated = config.injection == "gated"
        if config.phrase_model:
            key = f"conditions.{self.name}.phrase_model"
            self.__dict__["phrases"] = PhraseEncoder(backbone.local_path(config.phrase_model, key), key)
            self.label_dim = self.phrases.dim  # frozen and unregistered: its folder holds it
        else:
            self.class_embedding = nn.Embedding(config.num_classes, config.embed_dim)
            self.label_dim = config.embed_dim
        width = backbone.context_dim
        if self.gated:
            self.grounding = GroundingTokenizer(self.label_dim, width, config.num_freqs,
                                                config.grounding_hidden)
            self.fusers = gated_layers(backbone.transformer_blocks, width, config.position_freqs)
            return
        self.fourier = FourierFeatures(config.num_freqs)
        self.mlp = nn.Sequential(nn.Linear(self.label_dim + self.fourier.out_dim(4), 2 * width),
                                 nn.SiLU(), nn.Linear(2 * width, width))
        self.null_token = nn.Parameter(torch.randn(width) * 0.02)

    def output_specs(self) -> dict[Injection, OutputSpec]:
        if self.gated:
            return {Injection.GATED_ATTENTION: OutputSpec(
                Injection.GATED_ATTENTION, (self.config.max_boxes, self.backbone.context_dim))}
        return {Injection.CROSSATTN: OutputSpec(Injection.CROSSATTN,
                                                (1 + self.config.max_boxes, self.backbone.context_dim))}

    def block_layers(self) -> dict[Injection, nn.ModuleList]:
        return {Injection.GATED_ATTENTION: self.fusers} if self.gated else {}

    def batch_value(self, batch):
        if self.name in batch:
            return batch[self.name]
        return list(zip(batch[self.config.boxes_key], batch[self.config.labels_key]))

    def forward(self, value: list[tuple[torch.Tensor, Any]]) -> ConditionOutput:
        b, m = len(value), self.config.max_boxes
        device = self._device()
        boxes = torch.zeros(b, m, 4, device=device)
        present = torch.zeros(b, m, dtype=torch.bool, device=device)
        embedded = torch.zeros(b, m, self.label_dim, device=device)
        for i, (bx, lb) in enumerate(value):
            bx = torch.as_tensor(bx, dtype=torch.float32).reshape(-1, 4)
            self._check(bx, lb)
            n = min(len(bx), m)
            boxes[i, :n], present[i, :n] = bx[:n].to(device), True
            embedded[i, :n] = self.embed_labels(lb)[:n].to(device)
        if self.gated:
            return self._grounding(embedded, boxes, present)
        tokens = self.mlp(torch.cat([embedded, self.fourier(boxes * 2 - 1)], dim=-1))
        tokens = torch.where(present[..., None], tokens, torch.zeros_like(tokens))
        null = self.null_token.view(1, 1, -1).expand(b, 1, -1).to(tokens.dtype)
        mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=device), present], dim=1)
        return {Injection.CROSSATTN: Tokens(torch.cat([null, tokens], dim=1), mask)}

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def embed_labels(self, labels: Any) -> torch.Tensor:
        """One sample's labels (N,) -> (N, label_dim): rows of the class table, or with a phrase
        model each label's phrase (a class index names ``class_names[index]``) embedded."""
        if "phrases" not in self.__dict__:
            return self.class_embedding(torch.as_tensor(labels).long().to(self._device()))
        names = self.config.class_names
        return self.phrases([names[int(x)] if not isinstance(x, str) else x for x in labels])

    def _check(self, boxes: torch.Tensor, labels: Any) -> None:
        if len(boxes) != len(labels):
            raise ConfigError(f"layout: {len(boxes)} boxes but {len(labels)} labels.")
        if boxes.numel() and (boxes.min() < 0 or boxes.max() > 1 or (boxes[:, 2:] <= boxes[:, :2]).any()):
            raise ConfigError(f"layout: boxes must be [x0, y0, x1, y1] with 0 <= x0 < x1 <= 1 and "
                              f"0 <= y0 < y1 <= 1, got {boxes.tolist()}.")
        classes = self.config.num_classes if "phrases" not in self.__dict__ else len(self.config.class_names)
        ids = [int(x) for x in labels if not isinstance(x, str)]
        if ids and (min(ids) < 0 or max(ids) >= classes):
            raise ConfigError(f"layout: label {max(ids)} is outside 0..{classes - 1}.")

    def _grounding(self, phrases: torch.Tensor, boxes: torch.Tensor, present: torch.Tensor) -> ConditionOutput:
        """GLIGEN's tokens, every slot attended (empty ones carry the null features)."""
        tokens = self.grounding(phrases, boxes, present)
        window = (0.0, self.config.scheduled_sampling_beta)
        return {Injection.GATED_ATTENTION: Tokens(tokens, torch.ones_like(present), steps=window)}

    def null(self, batch_size: int) -> ConditionOutput:
        m, width = self.config.max_boxes, self.backbone.context_dim
        if self.gated:
            device = self._device()
            return self._grounding(torch.zeros(batch_size, m, self.label_dim, device=device),
                                   torch.zeros(batch_size, m, 4, device=device),
                                   torch.zeros(batch_size, m, dtype=torch.bool, device=device))
        values = torch.cat([self.null_token.view(1, 1, -1).expand(batch_size, 1, -1),
                            torch.zeros(batch_size, m, width, device=self.null_token.device)], dim=1)
        mask = torch.zeros(batch_size, 1 + m, dtype=torch.bool, device=self.null_token.device)
        mask[:, 0] = True
        return {Injection.CROSSATTN: Tokens(values, mask)}

    def collate(self, values: list[Any]) -> list[Any]:
        return list(values)

    def widget(self) -> Widget:
        return Widget(WidgetKind.BOXES, label="layout",
                      help=f"drag boxes on the image (at most {self.config.max_boxes}), a class each",
                      choices=tuple(self.config.class_names), size=self.backbone.image_size)

    def parse(self, value: Any) -> tuple[torch.Tensor, Any]:
        """A list of boxes ``[[x0, y0, x1, y1, "circle"], [x0, y0, x1, y1, 2], ...]``: a label by
        index, or by name from this model's ``class_names`` (an instance method: the names are
        config); with a phrase model any text is a label, kept as it is."""
        names = self.config.class_names
        free = "phrases" in self.__dict__
        try:
            if not isinstance(value, list):
                raise TypeError("not a list")
            boxes, labels = [], []
            for item in value:
                *coords, label = item
                boxes.append([float(c) for c in coords])
                if isinstance(label, str) and label not in names and not free:
                    raise ConfigError(f"cond.{self.name}: {label!r} is not a class of this model; "
                                      f"its classes are {', '.join(names)} (or "
                                      f"their indices 0..{len(names) - 1}). A layout with a "
                                      f"phrase model (conditions.{self.name}.phrase_model) takes "
                                      f"any phrase.")
                labels.append(label if free and isinstance(label, str)
                              else names.index(label) if isinstance(label, str) else int(label))
            boxes_t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        # RuntimeError: a box of other than 4 coordinates (the reshape)
        except (ValueError, TypeError, RuntimeError):
            shown = value if isinstance(value, str) else json.dumps(value)
            raise ConfigError(f"cond.{self.name}={shown!r} is not a JSON list of boxes; write e.g. "
                              f"'[[0.1,0.1,0.5,0.5,\"circle\"],[0.6,0.2,0.9,0.6,\"square\"]]' "
                              f"(labels: {', '.join(names)} or their indices"
                              f"{', or any phrase' if free else ''}).") from None
        return boxes_t, (tuple(labels) if free else torch.tensor(labels, dtype=torch.long))
