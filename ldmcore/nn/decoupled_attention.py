"""IP-Adapter's decoupled cross-attention (Ye et al., "IP-Adapter: Text Compatible Image Prompt
Adapter for Text-to-Image Diffusion Models", 2023): a second key/value projection in every
cross-attention layer, for a plugin's own tokens.

The block's cross-attention queries attend to the plugin's tokens through the plugin's ``to_k``
and ``to_v``; the result, times the plugin's ``scale`` (and its region, where one is given), is
added to the text attention's output before the shared output projection, as diffusers'
``IPAdapterAttnProcessor2_0`` does. Softmax over the text keys is untouched, which appending
tokens to the context could not promise. ``to_v`` starts at zero, so a new layer adds exactly
zero until it is trained (``to_k`` starts random, so its gradient flows from the first step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ldmcore.nn.attention import attention
from ldmcore.nn.inserted_layers import TransformerBlockShape


class DecoupledKeyValue(nn.Module):
    """The extra key/value projection of one cross-attention layer (``heads`` x ``head_dim``
    as that layer's queries), its output scaled by ``scale``."""

    def __init__(self, token_dim: int, heads: int, head_dim: int, scale: float = 1.0) -> None:
        super().__init__()
        self.heads, self.head_dim, self.scale = heads, head_dim, scale
        self.to_k = nn.Linear(token_dim, heads * head_dim, bias=False)
        self.to_v = nn.Linear(token_dim, heads * head_dim, bias=False)
        nn.init.zeros_(self.to_v.weight)

    def forward(self, q: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None = None,
                region: torch.Tensor | None = None) -> torch.Tensor:
        """``q`` (B, heads, L, head_dim) the layer's queries; ``tokens`` (B, N, token_dim);
        ``mask`` (B, N) bool; ``region`` (B, L, 1) weights -> (B, L, heads * head_dim), in
        ``q``'s dtype (computed in its own weights', which a bf16 backbone does not cast)."""
        b, h, d, dtype = q.shape[0], self.heads, self.head_dim, self.to_k.weight.dtype
        tokens = tokens.to(dtype)
        k = self.to_k(tokens).view(b, -1, h, d).transpose(1, 2)
        v = self.to_v(tokens).view(b, -1, h, d).transpose(1, 2)
        attn_mask = None if mask is None else mask[:, None, None, :].to(q.device)
        out = attention(q.to(dtype), k, v, attn_mask).transpose(1, 2).reshape(b, -1, h * d)
        if region is not None:
            out = out * region.to(out.dtype)
        return (self.scale * out).to(q.dtype)


def decoupled_layers(blocks: Sequence[TransformerBlockShape], token_dim: int,
                     scale: float = 1.0) -> nn.ModuleList:
    """One key/value layer per transformer block's cross-attention (``BackboneSpec.transformer_blocks``)."""
    return nn.ModuleList(DecoupledKeyValue(token_dim, b.heads, b.head_dim, scale) for b in blocks)
