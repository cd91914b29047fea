"""The options of ``ldm import`` and ``ldm export`` (their types, defaults and ``--help``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from ldmcore.schema import Strict


class ImportOptions(Strict):
    tokenizer: Path | None = Field(None, description="an SD file with a text encoder: a local "
                                   "folder of CLIP tokenizer files (a diffusers folder has its own)")
    prediction: Literal["eps", "v"] | None = Field(None, description="what the network predicts "
                                                   "(default: the file's metadata or scheduler)")
    image_size: int | None = Field(None, ge=8, description="the size it was trained at (default: "
                                   "the metadata's, else 512 for eps and 768 for v)")
    phrases: tuple[str, ...] | None = Field(None, description="a GLIGEN pipeline: phrases for the "
                                            "layout's boxes that ldm serve offers, comma-separated "
                                            "('a cat,a dog'); cond.layout takes any phrase")
    overwrite: bool = Field(False, description="replace OUT_DIR (only a run folder ldmcore made)")
    attach_to: Path | None = Field(None, description="SOURCE is a ControlNet, T2I-Adapter or "
                                   "IP-Adapter: write this run with it attached as a plugin")
    condition: str | None = Field(None, description="with attach_to: what the hint is (default: "
                                  "image, the picture the ControlNet was trained on)")
    name: str | None = Field(None, description="with attach_to: the plugin's name in "
                             "conditions.NAME (default: from the folder)")
    image_encoder: Path | None = Field(None, description="with attach_to and an IP-Adapter file: "
                                       "the local transformers folder of the CLIP vision model it "
                                       "reads (the file does not hold it)")
    progress: bool = Field(True, description="a progress bar of its stages (never when the "
                                             "output is not a terminal)")

    @field_validator("phrases", mode="before")
    @classmethod
    def _comma_separated(cls, v: object) -> object:
        if isinstance(v, str):
            return tuple(p.strip() for p in v.split(",") if p.strip())
        return v


class ExportOptions(Strict):
    layout: Literal["sd", "diffusers"] | None = Field(
        None, description="sd: one .safetensors file; diffusers: a folder (default: sd when OUT "
                          "ends in .safetensors, else diffusers)")
    ema: bool = Field(True, description="export the EMA weights (what the run samples with)")
    overwrite: bool = Field(False, description="replace OUT")
    progress: bool = Field(True, description="a progress bar of its stages (never when the "
                                             "output is not a terminal)")
