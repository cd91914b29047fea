"""The UNet denoiser eps_theta(z_t, t, conditions), in the CompVis/Stable Diffusion layout.

Parameter names match CompVis ``openaimodel.UNetModel`` (``time_embed``, ``label_emb``,
``input_blocks.N``, ``middle_block``, ``output_blocks.N``, ``out``) so SD 1.x/2.x weights load by
prefix. Conditions arrive already routed (``ldmcore.conditioning.Conditioning``): concat maps are
joined to the input channels, tokens feed cross-attention (with a key-padding mask), and a vector
is projected by ``label_emb`` and added to the timestep embedding; residual maps are added at
the encoder's taps (``taps.py``: the skip connections, the middle block, the end of each level).
The UNet has no flag per condition: its widths are derived from the enabled plugins by whoever
builds it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ldmcore.nn.attention import BasicTransformerBlock, SpatialTransformer, pointwise
from ldmcore.nn.embeddings import timestep_embedding
from ldmcore.nn.inserted_layers import InsertedLayers, TransformerBlockShape
from ldmcore.nn.norms import GroupNorm
from ldmcore.nn.taps import MIDDLE, level_end_block


@dataclass(frozen=True)
class UNetShape:
    """Everything that fixes the UNet's parameter shapes."""

    in_channels: int
    out_channels: int
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (1,)  # indices into channel_mult that get transformers
    num_head_channels: int = 32
    num_heads: int = 0  # >0: this many heads at every width (SD 1.x); 0: ch // num_head_channels
    transformer_depth: int = 1
    middle_attention: bool = True  # SD layout: middle_block.1 is a SpatialTransformer
    context_dim: int | None = None  # None: no cross-attention plugin enabled
    vector_dim: int = 0  # 0: no vector plugin enabled
    # how plugin vectors enter the timestep embedding: "mlp" (Linear-SiLU-Linear, keys
    # label_emb.0.0/0.2, diffusers' "projection" class embedding) or "linear" (one bias-free
    # Linear, key label_emb.weight: on one-hot vectors a class-embedding table, as SD x4's noise level)
    vector_projection: str = "mlp"
    cross_only_levels: tuple[int, ...] = ()  # levels whose attn1 attends to the context (SD x4 upscaler)
    use_linear_in_transformer: bool = False
    norm_groups: int = 32
    dropout: float = 0.0

    def heads_at(self, ch: int) -> int:
        return self.num_heads or max(1, ch // self.num_head_channels)

    def transformer_blocks(self) -> tuple[TransformerBlockShape, ...]:
        """Every transformer block in forward order (input blocks, middle, output blocks), with
        its width and heads: what a plugin that inserts layers into the blocks is sized from.
        The UNet numbers its blocks in this order (``BasicTransformerBlock.index``)."""
        mc, nrb = self.model_channels, self.num_res_blocks
        widths = [mc * mult for level, mult in enumerate(self.channel_mult)
                  if level in self.attention_levels for _ in range(nrb)]
        if self.middle_attention:
            widths.append(mc * self.channel_mult[-1])
        widths += [mc * mult for level, mult in reversed(list(enumerate(self.channel_mult)))
                   if level in self.attention_levels for _ in range(nrb + 1)]
        blocks = []
        for ch in widths:
            heads = self.heads_at(ch)
            blocks += [TransformerBlockShape(heads * (ch // heads), heads, ch // heads)] * self.transformer_depth
        return tuple(blocks)


class TimestepBlock(nn.Module):
    """A module whose forward also takes the timestep embedding."""


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands the embedding to ResBlocks and the context to transformers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, inserted: InsertedLayers | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, mask, inserted)
            else:
                x = layer(x)
        return x


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResBlock(TimestepBlock):
    """GroupNorm-SiLU-conv, plus the projected embedding, then GroupNorm-SiLU-dropout-conv."""

    def __init__(self, channels: int, emb_dim: int, out_channels: int, groups: int,
                 dropout: float) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm(groups, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.out_layers = nn.Sequential(GroupNorm(groups, out_channels), nn.SiLU(),
                                        nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip_connection = (nn.Identity() if channels == out_channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # in-place adds into fresh conv outputs: no backward formula needs a conv's output
        h = self.in_layers(x)
        h += self.emb_layers(emb).to(h.dtype)[..., None, None]
        out = self.out_layers(h)
        skip = self.skip_connection
        out += pointwise(skip, x) if isinstance(skip, nn.Conv2d) else skip(x)
        return out


class UNetModel(nn.Module):
    def __init__(self, shape: UNetShape) -> None:
        super().__init__()
        self.shape = shape
        s = shape
        mc, groups = s.model_channels, s.norm_groups
        emb_dim = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if s.vector_projection not in ("mlp", "linear"):
            raise ValueError(f"vector_projection={s.vector_projection!r}: 'mlp' or 'linear'")
        if s.vector_dim and s.vector_projection == "linear":
            self.label_emb = nn.Linear(s.vector_dim, emb_dim, bias=False)
        elif s.vector_dim:
            # nested as in SDXL's "sequential" adm input: keys label_emb.0.0.* / label_emb.0.2.*
            self.label_emb = nn.Sequential(nn.Sequential(
                nn.Linear(s.vector_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)))

        def transformer(ch: int, level: int | None = None) -> SpatialTransformer:
            heads = s.heads_at(ch)
            return SpatialTransformer(ch, heads, ch // heads, s.context_dim, s.transformer_depth,
                                      groups, s.use_linear_in_transformer,
                                      cross_only=level in s.cross_only_levels)

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(s.in_channels, mc, 3, padding=1))])
        skip_channels = [mc]
        ch = mc
        for level, mult in enumerate(s.channel_mult):
            for _ in range(s.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mc * mult, groups, s.dropout)]
                ch = mc * mult
                if level in s.attention_levels:
                    layers.append(transformer(ch, level))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(s.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, emb_dim, ch, groups, s.dropout),
            *([transformer(ch)] if s.middle_attention else []),
            ResBlock(ch, emb_dim, ch, groups, s.dropout))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(s.channel_mult))):
            for i in range(s.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mc * mult, groups, s.dropout)]
                ch = mc * mult
                if level in s.attention_levels:
                    layers.append(transformer(ch, level))
                if level and i == s.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm(groups, ch), nn.SiLU(),
                                 nn.Conv2d(ch, s.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        # number the transformer blocks as transformer_blocks() lists them: plugin layers are
        # indexed by these numbers
        blocks = [m for m in self.modules() if isinstance(m, BasicTransformerBlock)]
        assert len(blocks) == len(s.transformer_blocks()), "transformer_blocks() out of step"
        for index, block in enumerate(blocks):
            block.index = index

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None,
                vector: torch.Tensor | None = None,
                residuals: dict[str, torch.Tensor] | None = None,
                inserted: InsertedLayers | None = None) -> torch.Tensor:
        """``x`` is z_t already joined with concat conditions on channels; ``t`` (B,) timesteps;
        ``residuals`` maps tap names (``ldmcore.nn.taps``) to feature maps added there;
        ``inserted``: plugins' layers inside the transformer blocks, with their tokens."""
        s = self.shape
        if x.shape[1] != s.in_channels:
            raise ValueError(f"UNet expects {s.in_channels} input channels, got {x.shape[1]}")
        first = self.input_blocks[0][0].weight
        if not torch.is_autocast_enabled(x.device.type):  # bf16 weights take bf16 inputs
            x = x.to(first.dtype)
            context = None if context is None else context.to(first.dtype)
        if first.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        emb = self.time_embed(timestep_embedding(t, s.model_channels).to(x.dtype))
        if s.vector_dim:
            if vector is None:
                raise ValueError("this UNet was built with a vector input; pass `vector`")
            emb = emb + self.label_emb(vector.to(emb.dtype))
        if s.context_dim is not None and context is None:
            raise ValueError("this UNet was built with cross-attention; pass `context`")
        run = self._checkpointed if self.checkpointing and torch.is_grad_enabled() else _call
        skips = []
        h = x
        if residuals:
            ends = {level_end_block(s, level): f"encoder.{level}" for level in range(len(s.channel_mult))}
        for i, block in enumerate(self.input_blocks):
            h = run(block, h, emb, context, context_mask, inserted)
            if residuals:
                h = _plus(h, residuals.get(ends.get(i, "")))  # flows on and into the skip
                skips.append(_plus(h, residuals.get(f"skip.{i}")))  # the skip connection only
            else:
                skips.append(h)
        h = run(self.middle_block, h, emb, context, context_mask, inserted)
        if residuals:
            h = _plus(h, residuals.get(MIDDLE))
        for block in self.output_blocks:
            h = run(block, torch.cat([h, skips.pop()], dim=1), emb, context, context_mask, inserted)
        return self.out(h)

    # Gradient checkpointing (``execution.checkpointing``): keep only each block's input and
    # recompute its activations during backward; an execution switch, not part of the shape.
    checkpointing: bool = False

    @staticmethod
    def _checkpointed(block: nn.Module, *args: torch.Tensor | InsertedLayers | None) -> torch.Tensor:
        return checkpoint(block, *args, use_reentrant=False)


def _plus(h: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    return h if residual is None else h + residual.to(h.dtype)


def _call(block: nn.Module, *args: torch.Tensor | InsertedLayers | None) -> torch.Tensor:
    return block(*args)
