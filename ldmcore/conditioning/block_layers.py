"""Job 5 of a condition plugin, for two injection kinds only: the layers it inserts into the
backbone's transformer blocks.

A ``gated_attention`` plugin (GLIGEN) or a ``decoupled_crossattn`` plugin (IP-Adapter) changes
what happens *inside* every transformer block, so its output tokens are read by layers of its
own: one per block, in the order of ``BackboneSpec.transformer_blocks`` (forward order), each
sized from that block's ``TransformerBlockShape``. The layers are registered submodules of the
encoder, so the plugin owns them: they are in its state dict (``RUN/plugins/<name>.safetensors``),
``trainer.train_only=[plugins]`` trains them, and a model without the plugin has the backbone
exactly as it was. The ``Conditioner`` checks them at build time and hands them, with the
tokens, to the blocks through ``Conditioning.inserted``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ldmcore.conditioning.injection import Injection
from ldmcore.errors import PluginError
from ldmcore.nn.inserted_layers import TransformerBlockShape


class BlockLayers:
    """The hook of job 5. Default: no layers (the three doors of the backbone's own inputs)."""

    def block_layers(self) -> dict[Injection, Sequence[nn.Module]]:
        """For each of ``gated_attention`` / ``decoupled_crossattn`` this instance feeds, its
        layers, one per transformer block: ``ldmcore.nn.gated_attention.gated_layers`` and
        ``ldmcore.nn.decoupled_attention.decoupled_layers`` build them from the backbone's
        blocks. A gated layer is called ``layer(x, tokens, mask, size) -> x`` after the block's
        self-attention (``size`` the (h, w) of its feature map) and must return ``x`` exactly
        while its gate is shut (at init); it has ``dim`` = the block's width. A decoupled layer is called ``layer(q, tokens, mask,
        region) -> (B, L, width)`` with the cross-attention's queries, added to that attention's
        output, and must add exactly zero at init; it has the block's ``heads`` and ``head_dim``."""
        return {}


def check_block_layers(name: str, encoder: nn.Module, injection: Injection,
                       shape: tuple[int, ...], blocks: Sequence[TransformerBlockShape]) -> None:
    """The build-time checks of a layer-inserting output: tokens ``(N, width)``, one layer per
    transformer block, each fitting its block and owned by the encoder. Raises ``PluginError``
    naming the plugin and what to change."""
    kind = injection.value
    if len(shape) != 2:
        raise PluginError(f"plugin {name!r}: {kind} spec {shape} must be (tokens, width).")
    layers = encoder.block_layers().get(injection)
    if layers is None:
        raise PluginError(f"plugin {name!r} outputs {kind} tokens but block_layers() gives no "
                          f"layers for them; return {{Injection.{injection.name}: layers}}, one "
                          f"layer per BackboneSpec.transformer_blocks entry.")
    if len(layers) != len(blocks):
        raise PluginError(f"plugin {name!r} has {len(layers)} {kind} layers but the backbone has "
                          f"{len(blocks)} transformer blocks; build one per "
                          f"BackboneSpec.transformer_blocks entry, in that order.")
    owned = {id(p) for p in encoder.parameters()}
    for i, (layer, block) in enumerate(zip(layers, blocks)):
        if injection is Injection.GATED_ATTENTION and getattr(layer, "dim", None) != block.width:
            raise PluginError(f"plugin {name!r}: gated layer {i} has dim "
                              f"{getattr(layer, 'dim', None)} but transformer block {i} has "
                              f"width {block.width}; size each layer from its block.")
        if injection is Injection.DECOUPLED_CROSSATTN and (
                getattr(layer, "heads", None), getattr(layer, "head_dim", None)) != (block.heads, block.head_dim):
            raise PluginError(f"plugin {name!r}: decoupled layer {i} has heads x head_dim "
                              f"{getattr(layer, 'heads', None)} x {getattr(layer, 'head_dim', None)} "
                              f"but transformer block {i} has {block.heads} x {block.head_dim}; "
                              f"size each layer from its block.")
        stray = [k for k, p in layer.named_parameters() if id(p) not in owned]
        if stray:
            raise PluginError(f"plugin {name!r}: parameters {stray[:3]} of its {kind} layer {i} "
                              f"are not the encoder's own; register the layers as submodules "
                              f"(an nn.ModuleList attribute), so they are saved, trained and "
                              f"removed with the plugin.")
