"""What ``ldm eval`` takes: its ``key=value`` options as one validated request (the source of
their types, defaults and ``ldm eval --help``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from ldmcore.arguments import key_values, parse_options
from ldmcore.errors import ConfigError
from ldmcore.schema import Strict


class EvalRequest(Strict):
    run: Path = Field(description="the run folder to score")
    samples: Path | None = Field(None, description="score this folder of `ldm sample` output "
                                 "instead of sampling (default RUN/samples/final when the run's "
                                 "data has no held-out split)")
    n: int = Field(64, ge=1, description="held-out conditions to sample and score")
    sampler: str | None = Field(None, description="default: the run's sampler config; NAME: "
                                "that sampler with its own config (conf/sampler/NAME.yaml)")
    steps: int | None = Field(None, ge=1, description="default: the sampler config's")
    guidance: float | None = Field(None, description="classifier-free guidance scale; default: "
                                   "the run's")
    plugin_guidance: dict[str, float] = Field(
        default_factory=dict, description="guidance.NAME=SCALE: a scale per condition, merged "
        "into the run's (0 drops that condition from every branch: e.g. guidance.text=0 scores "
        "an image prompt without its caption)")
    seed: int = Field(0, description="noise of condition i: seed + i")
    average: int = Field(1, ge=1, description="also score the mean of K samples per condition "
                                              "(metrics that average, e.g. PSNR)")
    precision: Literal["auto", "bf16", "fp32", "fp16"] = Field(
        "auto", description="auto: bf16 where the hardware runs it natively, else fp32 (CPU) "
                            "or fp16 (GPU)")
    threads: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="auto: the cores other processes leave free; N: exactly N")
    progress: bool = Field(True, description="a progress bar while sampling (never when the "
                                             "output is not a terminal)")


PLUGIN_GUIDANCE = "guidance."  # guidance.NAME=SCALE, as ``ldm sample`` writes it


def parse_eval_request(args: list[str]) -> EvalRequest:
    """``key=value`` words (``guidance.NAME=SCALE`` per condition) into a validated request;
    each mistake names the key."""
    per_plugin = {a.partition("=")[0][len(PLUGIN_GUIDANCE):]: a.partition("=")[2]
                  for a in args if a.startswith(PLUGIN_GUIDANCE)}
    args = [a for a in args if not a.startswith(PLUGIN_GUIDANCE)]
    if "run" not in key_values(args, set(EvalRequest.model_fields) - {"plugin_guidance"}):  # unknown words first
        raise ConfigError("ldm eval needs run=RUN_DIR (and optionally samples=DIR, a folder of "
                          "`ldm sample` output, default RUN_DIR/samples/final when the run's "
                          "data has no held-out split; else n=64 steps=... seed=0 average=1).")
    return parse_options(args, EvalRequest, plugin_guidance=per_plugin)
