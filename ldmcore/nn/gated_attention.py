"""GLIGEN's gated self-attention (Li et al., "GLIGEN: Open-Set Grounded Text-to-Image
Generation", 2023): a layer inserted after the self-attention of every transformer block.

The visual tokens and the grounding tokens (projected to the block's width) attend to each
other; only the visual tokens' outputs are kept, and they enter the residual stream through
``tanh(alpha_attn)``, followed by a feed-forward through ``tanh(alpha_dense)``. Both gates start
at zero, so a freshly inserted layer returns its input exactly: a pretrained backbone's output
does not move until training opens the gates. Parameter names follow GLIGEN's and diffusers'
``GatedSelfAttentionDense`` (``linear``, ``attn.to_q``, ``ff.net.0.proj``, ``norm1``,
``alpha_attn``...), so their weights map one to one.

``position_freqs`` > 0 (not in GLIGEN) adds Fourier features of each visual token's place on the
feature map, through a learned projection, to the visual tokens the layer's attention reads (not
to the residual stream). GLIGEN relies on the backbone's features telling where a token lies; a
small backbone's often do not (in the shapes text model's 8x8 blocks a linear read-out of x, y
from the features explains 26-52% of their variance: ``python -m benchmarks.condition_signal``),
and a grounding
token can only pull features inside its box if the queries know where they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ldmcore.nn.attention import CrossAttention, FeedForward
from ldmcore.nn.embeddings import FourierFeatures
from ldmcore.nn.inserted_layers import TransformerBlockShape
from ldmcore.nn.norms import LayerNorm


class GatedSelfAttention(nn.Module):
    """Self-attention over [visual tokens | projected grounding tokens], gated into the visual
    tokens; ``dim`` is the block's width, ``token_dim`` the grounding tokens'; ``position_freqs``
    > 0 tells the attention where each visual token lies (see the module)."""

    def __init__(self, dim: int, token_dim: int, heads: int, head_dim: int, position_freqs: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.linear = nn.Linear(token_dim, dim)
        self.attn = CrossAttention(dim, None, heads, head_dim)
        self.ff = FeedForward(dim)
        self.norm1 = LayerNorm(dim)
        self.norm2 = LayerNorm(dim)
        self.alpha_attn = nn.Parameter(torch.zeros(()))
        self.alpha_dense = nn.Parameter(torch.zeros(()))
        self.place = FourierFeatures(position_freqs) if position_freqs else None
        self.position = nn.Linear(self.place.out_dim(2), dim) if self.place is not None else None

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None = None,
                size: tuple[int, int] | None = None) -> torch.Tensor:
        """``x`` (B, L, dim) visual tokens, row-major over a (h, w) = ``size`` map (needed with
        ``position_freqs``); ``tokens`` (B, N, token_dim); ``mask`` (B, N) bool
        (True = attend; visual tokens are always attended). Runs in its own weights' dtype and
        returns ``x``'s (a backbone cast to bf16 for sampling keeps the plugin's layers as they
        are), so with the gates shut the result is ``x`` exactly."""
        n, dtype = x.shape[1], self.linear.weight.dtype
        out = x.to(dtype)
        h = self.norm1(torch.cat([self._placed(out, size), self.linear(tokens.to(dtype))], dim=1))
        keep = None if mask is None else torch.cat(
            [torch.ones(x.shape[0], n, dtype=torch.bool, device=x.device), mask.to(x.device)], dim=1)
        # queries of the visual tokens only: the grounding tokens' outputs would be dropped
        out = out + self.alpha_attn.tanh() * self.attn(h[:, :n], h, keep)
        out = out + self.alpha_dense.tanh() * self.ff(self.norm2(out))
        return out.to(x.dtype)

    def _placed(self, x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
        """The visual tokens as the attention reads them: with their places added, if asked."""
        if self.place is None:
            return x
        if size is None or size[0] * size[1] != x.shape[1]:
            raise ValueError(f"a gated layer with position features needs the (h, w) of its "
                             f"{x.shape[1]} tokens, got size={size}")
        h, w = size
        ys, xs = torch.meshgrid((torch.arange(h, device=x.device) + 0.5) / h,
                                (torch.arange(w, device=x.device) + 0.5) / w, indexing="ij")
        centres = torch.stack([xs, ys], dim=-1).reshape(h * w, 2).to(x.dtype) * 2 - 1
        return x + self.position(self.place(centres))


def gated_layers(blocks: Sequence[TransformerBlockShape], token_dim: int,
                 position_freqs: int = 0) -> nn.ModuleList:
    """One gated layer per transformer block (``BackboneSpec.transformer_blocks``), in order."""
    return nn.ModuleList(GatedSelfAttention(b.width, token_dim, b.heads, b.head_dim, position_freqs)
                         for b in blocks)
