"""Attention: multi-head (cross-)attention, the transformer block, and SpatialTransformer.

Parameter names follow CompVis/Stable Diffusion (``attn1``, ``attn2``, ``to_q``, ``ff.net.0.proj``,
``proj_in``...) so SD checkpoints load by prefix. Attention runs through
``torch.nn.functional.scaled_dot_product_attention`` (fused kernels where available).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ldmcore.nn.norms import GroupNorm, LayerNorm

if TYPE_CHECKING:
    from ldmcore.nn.inserted_layers import InsertedLayers


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Fused scaled-dot-product attention over (B, heads, L, d) tensors.

    On CPU the bf16 flash kernel's *backward* is several times slower than the float32 one
    (23 ms vs 1.8 ms for 128x4 heads of 16 tokens, 151 vs 89 ms at 256 tokens, on this
    project's AVX-512/AMX machine), so when gradients flow the core runs in float32 and the
    projections around it stay in bf16. Without gradients (sampling) the bf16 forward kernel
    is the faster one (60 vs 76 ms for 8x8 heads of 1024 tokens of width 8) and accumulates
    its softmax in float32 itself, so inputs go in as they are.
    """
    grads = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and grads:
        with torch.autocast("cpu", enabled=False):  # autocast would cast the core back to bf16
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class CrossAttention(nn.Module):
    """Queries from ``x``; keys/values from ``context`` (or from ``x`` when context is None)."""

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, head_dim: int) -> None:
        super().__init__()
        inner = heads * head_dim
        kv_dim = context_dim if context_dim is not None else query_dim
        self.heads = heads
        self.head_dim = head_dim
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(kv_dim, inner, bias=False)
        self.to_v = nn.Linear(kv_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Identity())

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None,
                beside: Sequence[Callable[[torch.Tensor], torch.Tensor]] = ()) -> torch.Tensor:
        """``x`` (B, L, Dq); ``context`` (B, N, Dc); ``mask`` (B, N) bool, True = attend.
        ``beside``: further attention paths on the same queries (B, heads, L, d), each giving
        (B, L, heads * d) that is added before the output projection (decoupled
        cross-attention, as IP-Adapter)."""
        kv = x if context is None else context
        b = x.shape[0]
        h, d = self.heads, self.head_dim
        q = self.to_q(x).view(b, -1, h, d).transpose(1, 2)
        k = self.to_k(kv).view(b, -1, h, d)
        v = self.to_v(kv).view(b, -1, h, d)
        attn_mask = None if mask is None or context is None else mask[:, None, None, :]
        out = attention(q, k.transpose(1, 2), v.transpose(1, 2), attn_mask)
        out = out.transpose(1, 2).reshape(b, -1, h * d)
        for path in beside:
            out = out + path(q)
        return self.to_out(out)


class GEGLU(nn.Module):
    """Gated GELU projection (Shazeer 2020): ``a * gelu(b)`` where ``[a | b] = proj(x)``."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == torch.float32:
            # float32 CPU addmm first copies the broadcast bias into its (tokens x 2*inner)
            # output; a plain GEMM plus an in-place bias add is ~35% faster at SD's shapes
            h = F.linear(x, self.proj.weight).add_(self.proj.bias)
        else:
            h = self.proj(x)
        a, gate = h.chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention, feed-forward; pre-norm residuals.

    ``cross_only``: the first attention attends to the context too, not to the features (SD's x4
    upscaler; CompVis ``disable_self_attn``, diffusers ``only_cross_attention``).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None,
                 cross_only: bool = False) -> None:
        super().__init__()
        self.cross_only = cross_only and context_dim is not None
        self.attn1 = CrossAttention(dim, context_dim if self.cross_only else None, heads, head_dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, head_dim)
        self.ff = FeedForward(dim)
        self.norm1 = LayerNorm(dim)
        self.norm2 = LayerNorm(dim)
        self.norm3 = LayerNorm(dim)

    index: int = -1
    """Its place in the UNet's forward order, set by the UNet; plugin layers are indexed by it."""

    def forward(self, x: torch.Tensor, context: torch.Tensor | None,
                mask: torch.Tensor | None, inserted: InsertedLayers | None = None,
                size: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """``inserted``: plugins' layers (gated after self-attention, decoupled beside
        cross-attention) for features of spatial ``size``."""
        x = x + (self.attn1(self.norm1(x), context, mask) if self.cross_only else self.attn1(self.norm1(x)))
        beside = ()
        if inserted is not None:
            if self.index < 0:
                raise ValueError("plugin layers reach a transformer block by its number in a "
                                 "UNet; this block was built outside one (set its index)")
            x = inserted.after_self_attention(self.index, x, size)
            beside = inserted.beside_cross_attention(self.index, size)
        x = x + self.attn2(self.norm2(x), context, mask, beside)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, conditioned by cross-attention tokens.

    ``use_linear`` selects SD 2.x's linear ``proj_in``/``proj_out`` instead of SD 1.x's 1x1 convs.
    Without a context (no cross-attention plugin enabled) ``attn2`` attends to the features
    themselves, as in CompVis.
    """

    def __init__(self, channels: int, heads: int, head_dim: int, context_dim: int | None,
                 depth: int = 1, groups: int = 32, use_linear: bool = False,
                 cross_only: bool = False) -> None:
        super().__init__()
        inner = heads * head_dim
        self.use_linear = use_linear
        self.norm = GroupNorm(groups, channels, eps=1e-6)
        if use_linear:
            self.proj_in = nn.Linear(channels, inner)
            self.proj_out = nn.Linear(inner, channels)
        else:
            self.proj_in = nn.Conv2d(channels, inner, 1)
            self.proj_out = nn.Conv2d(inner, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, head_dim, context_dim, cross_only) for _ in range(depth))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, inserted: InsertedLayers | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        residual = x
        x = self.norm(x)
        if not self.use_linear and is_channels_last(x):
            # (B, C, H, W) -> (B, HW, C) is a view here, and the 1x1 convs are the same GEMMs as
            # linears over those tokens (CPU convolution sends NHWC 1x1 convs to a slow path)
            x = F.linear(x.flatten(2).transpose(1, 2), self.proj_in.weight.flatten(1), self.proj_in.bias)
            for block in self.transformer_blocks:
                x = block(x, context, mask, inserted, (h, w))
            x = F.linear(x, self.proj_out.weight.flatten(1), self.proj_out.bias)
            return x.transpose(1, 2).reshape(b, c, h, w) + residual
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.flatten(2).transpose(1, 2)
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context, mask, inserted, (h, w))
        if self.use_linear:
            x = self.proj_out(x)
        x = x.transpose(1, 2).reshape(b, -1, h, w)
        if not self.use_linear:
            x = self.proj_out(x)
        return x + residual


def is_channels_last(x: torch.Tensor) -> bool:
    """A 4-d tensor stored NHWC (and not also plain-contiguous, as 1x1 maps are)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution; on NHWC input, the same GEMM as a linear over the pixels."""
    if is_channels_last(x):
        y = F.linear(x.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias)
        return y.permute(0, 3, 1, 2)
    return conv(x)
