"""GLIGEN's gated self-attention (Li et al., "GLIGEN: Open-Set Grounded Text-to-Image
Generation", 2023): a layer inserted after the self-attention of every transformer block.

The visual tokens and the grounding tokens (projected to the block's width) attend to each
other; only the visual tokens' outputs are kept, and they enter the residual stream through
``tanh(alpha_attn)``, followed by a feed-forward through ``tanh(alpha_dense)``. Both gates start
at zero, so a freshly inserted layer returns its input exactly: a pretrained backbone's output
does not move until training opens the gates. Parameter names follow GLIGEN's and diffusers'
``GatedSelfAttentionDense`` (``linear``, ``attn.to_q``, ``ff.net.0.proj``, ``norm1``,
``alpha_attn``...), so their weights map one to one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ldmcore.nn.attention import CrossAttention, FeedForward
from ldmcore.nn.inserted_layers import TransformerBlockShape
from ldmcore.nn.norms import LayerNorm


class GatedSelfAttention(nn.Module):
    """Self-attention over [visual tokens | projected grounding tokens], gated into the visual
    tokens; ``dim`` is the block's width, ``token_dim`` the grounding tokens'."""

    def __init__(self, dim: int, token_dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.linear = nn.Linear(token_dim, dim)
        self.attn = CrossAttention(dim, None, heads, head_dim)
        self.ff = FeedForward(dim)
        self.norm1 = LayerNorm(dim)
        self.norm2 = LayerNorm(dim)
        self.alpha_attn = nn.Parameter(torch.zeros(()))
        self.alpha_dense = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``x`` (B, L, dim) visual tokens; ``tokens`` (B, N, token_dim); ``mask`` (B, N) bool
        (True = attend; visual tokens are always attended). Runs in its own weights' dtype and
        returns ``x``'s (a backbone cast to bf16 for sampling keeps the plugin's layers as they
        are), so with the gates shut the result is ``x`` exactly."""
        n, dtype = x.shape[1], self.linear.weight.dtype
        out = x.to(dtype)
        h = self.norm1(torch.cat([out, self.linear(tokens.to(dtype))], dim=1))
        keep = None if mask is None else torch.cat(
            [torch.ones(x.shape[0], n, dtype=torch.bool, device=x.device), mask.to(x.device)], dim=1)
        # queries of the visual tokens only: the grounding tokens' outputs would be dropped
        out = out + self.alpha_attn.tanh() * self.attn(h[:, :n], h, keep)
        out = out + self.alpha_dense.tanh() * self.ff(self.norm2(out))
        return out.to(x.dtype)


def gated_layers(blocks: Sequence[TransformerBlockShape], token_dim: int) -> nn.ModuleList:
    """One gated layer per transformer block (``BackboneSpec.transformer_blocks``), in order."""
    return nn.ModuleList(GatedSelfAttention(b.width, token_dim, b.heads, b.head_dim) for b in blocks)
