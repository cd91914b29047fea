"""Normalisation layers that run with float32 affine parameters on bf16/fp16 activations.

``execution.bf16_weights`` keeps every norm's parameters in float32 (see ``nn/execution.py``).
PyTorch's CPU kernels take such mixed inputs; its CUDA kernels take one dtype for input and
affine, so on other devices the affine parameters are cast to the activations' dtype when they
differ (the statistics are computed in float32 either way).

GroupNorm also avoids PyTorch's slow CPU kernel for small bf16 channels-last maps.

Measured on this project's AVX-512/AMX CPU (one thread, torch 2.13): the channels-last bf16
GroupNorm kernel takes 1.8 ms on an (8, 128, 16, 16) map where the NCHW kernel takes 0.10 ms,
and 0.50 vs 0.07 ms at 8x8; at 32x32 and above the two are on par. Below ``SMALL_MAP`` pixels
the norm therefore runs on an NCHW copy (0.37 ms with both copies) and hands back channels-last.
Both kernels take float32 statistics; the detour's output is bit-identical to the NCHW kernel's
and differs from the NHWC kernel's by bf16 rounding only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SMALL_MAP = 256  # pixels (H * W) at or below which the NCHW detour wins


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` with the same parameters and state-dict keys; see the module docstring."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype != torch.float32 and x.dim() == 4
                and x.shape[-1] * x.shape[-2] <= SMALL_MAP and not x.is_contiguous()
                and x.is_contiguous(memory_format=torch.channels_last)):
            out = F.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)
            return out.contiguous(memory_format=torch.channels_last)
        return F.group_norm(x, self.num_groups, *affine_for(self, x), self.eps)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` with the same parameters and state-dict keys; see the module docstring."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, *affine_for(self, x), self.eps)


def affine_for(norm: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The norm's (weight, bias), cast to ``x``'s dtype off the CPU when the two differ."""
    weight, bias = norm.weight, norm.bias
    if x.device.type != "cpu" and weight is not None and weight.dtype != x.dtype:
        weight = weight.to(x.dtype)
        bias = None if bias is None else bias.to(x.dtype)
    return weight, bias
