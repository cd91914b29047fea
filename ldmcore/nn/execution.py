"""How the backbone executes: weight dtype, memory format, compilation. Numbers stay the same maps.

These are speed choices, not model choices: a checkpoint does not record them and every one of
them keeps the output within a stated tolerance of the float32 eager reference.

* ``channels_last`` stores conv weights and activations as NHWC. oneDNN (CPU) and cuDNN convolve
  NHWC without reordering, GroupNorm has NHWC kernels, and a SpatialTransformer's
  ``(B, C, H, W) -> (B, HW, C)`` token view becomes free instead of a copy.
* ``bf16 weights`` (inference only) store the network in bfloat16 once instead of letting
  autocast re-cast every weight on every call. Normalisation layers keep float32 parameters
  and compute their statistics in float32 (PyTorch's CPU and CUDA norm kernels accept bf16
  activations with float32 affine parameters); the attention softmax accumulates in float32
  inside the fused kernel. Training keeps float32 master weights under autocast instead.
* ``checkpointing`` (training) keeps only each UNet block's input and recomputes the rest in
  backward: less activation memory for about one more forward pass of time; same gradients.
* ``compile`` wraps the module in ``torch.compile``; the first call that fails to compile
  (no C++ compiler, an unsupported op) prints one line and the module runs eagerly from then on.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

NORMS = (nn.GroupNorm, nn.LayerNorm)


def cast_weights(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast floating-point parameters and buffers to ``dtype`` in place, except those of
    normalisation layers, which stay float32 so their statistics and affine maps stay exact."""
    for m in module.modules():
        if isinstance(m, NORMS):
            m.float()
            continue
        for p in m.parameters(recurse=False):
            if p.is_floating_point():
                p.data = p.data.to(dtype)
        for name, b in m.named_buffers(recurse=False):
            if b.is_floating_point() and name != "scale_factor":
                setattr(m, name, b.to(dtype))
    return module


def to_channels_last(module: nn.Module) -> nn.Module:
    """NHWC storage for every 4-d weight (convolutions); outputs of convs follow their weight."""
    return module.to(memory_format=torch.channels_last)


class Compiled(nn.Module):
    """``torch.compile(module)`` with a fallback to eager on the first failure.

    Attribute access goes through to the wrapped module, so code that reads ``unet.shape`` or
    a weight's dtype keeps working. The parameters are the wrapped module's own.
    """

    def __init__(self, module: nn.Module, mode: str | None = None, dynamic: bool | None = False,
                 freeze: bool = True) -> None:
        super().__init__()
        self.module = module
        self.failed: str | None = None
        # inductor's freezing (inference only) folds the weights in as constants and prepacks
        # them for oneDNN; it applies to calls under no_grad/inference_mode
        compiled = torch.compile(module, mode=mode, dynamic=dynamic,
                                 options={"freezing": freeze} if freeze else None)
        # kept off the module registry so the parameters are listed once, under ``module``
        object.__setattr__(self, "_compiled", compiled)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed is None:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - any compiler failure means: run eagerly
                self.failed = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                print(f"ldmcore: torch.compile failed, running eagerly ({self.failed})",
                      file=sys.stderr)
        return self.module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def for_inference(module: nn.Module, *, bf16_weights: bool = False, channels_last: bool = True,
                  compile: bool = False) -> nn.Module:
    """``module`` (modified in place) ready for sampling; wrapped in ``Compiled`` if asked."""
    module.eval()
    if channels_last:
        to_channels_last(module)
    if bf16_weights:
        cast_weights(module, torch.bfloat16)
    return Compiled(module) if compile else module


def for_training(module: nn.Module, *, channels_last: bool = True,
                 checkpointing: bool = False) -> nn.Module:
    """``module`` (modified in place; parameters keep their identity) ready for training.
    ``checkpointing`` recomputes each UNet block's activations in backward (memory for time)."""
    if checkpointing:
        if not hasattr(module, "checkpointing"):
            raise TypeError(f"{type(module).__name__} has no gradient checkpointing switch")
        module.checkpointing = True
    return to_channels_last(module) if channels_last else module
