"""The options of ``ldm serve`` (their types, defaults and ``--help``), importable without the
web server packages so that ``ldm serve --help`` works before they are installed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from ldmcore.schema import Strict


class ServeOptions(Strict):
    run: Path = Field(description="a trained or imported run folder")
    host: str = Field("127.0.0.1", description="the address to listen on; any but a loopback "
                      "address is announced with a warning (the page has no login)")
    port: int = Field(7860, ge=0, le=65535, description="0: a free port (the start-up line "
                      "says which)")
    precision: str = Field("auto", pattern="^(auto|bf16|fp32|fp16)$", description="as for ldm "
                           "sample; given, it is also in the command the page shows")
    threads: Annotated[int, Field(ge=1)] | Literal["auto"] = Field("auto", description="as for "
                                                                    "ldm sample; given, also in "
                                                                    "the command")
    max_images: int = Field(16, ge=1, le=1024, description="the most images one request makes")
    queue: int = Field(8, ge=1, le=1000, description="requests that may wait; one more is refused")
    ema: bool = Field(True, description="sample the EMA weights, as ldm sample does")
