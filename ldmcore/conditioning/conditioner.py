"""The Conditioner: runs every enabled encoder and routes its outputs by declared injection.

It applies per-plugin dropout and joins outputs: cross-attention tokens along the sequence axis
(with key-padding masks, so encoders may emit different token counts), concat maps along
channels, vectors along features; residual outputs are kept per plugin and summed per tap in
each UNet call (``residual.py``). The backbone's input channels, context width and vector width
are derived from the encoders' specs here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ldmcore.conditioning.block_layers import check_block_layers
from ldmcore.conditioning.encoder import ConditionEncoder
from ldmcore.conditioning.injection import ConditionOutput, Conditioning, Injection, Tokens
from ldmcore.conditioning.residual import (Residual, Residuals, check_residual_output,
                                           check_residual_spec)
from ldmcore.conditioning.sample_shaping import loss_weight_problem
from ldmcore.errors import PluginError
from ldmcore.nn.inserted_layers import EVERY_STEP, DecoupledTokens, GatedTokens, InsertedLayers
from ldmcore.randomness import BatchRandom, as_batch_random


class Conditioner(nn.Module):
    """Runs the enabled encoders and routes their outputs by declared injection."""

    def __init__(self, encoders: dict[str, ConditionEncoder]) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.specs = {name: enc.output_specs() for name, enc in encoders.items()}
        for name, enc in encoders.items():
            self._check_encoder(name, enc)
            if not enc.trainable:  # frozen: no gradients, no optimizer state, no DDP sync
                enc.requires_grad_(False)
        based = [name for name, enc in encoders.items() if enc.provides_base]
        if len(based) > 1:
            raise PluginError(f"plugins {' and '.join(repr(n) for n in based)} each give a base "
                              f"image, and a model diffuses around one; turn the base off on all "
                              f"but one (e.g. conditions.{based[-1]}.base=none).")
        self.base_plugin: str | None = based[0] if based else None

    def _check_encoder(self, name: str, enc: ConditionEncoder) -> None:
        specs = self.specs[name]
        if not specs:
            raise PluginError(f"plugin {name!r} declares no outputs; output_specs() must name "
                              f"at least one of {[i.value for i in Injection]}.")
        for inj, spec in specs.items():
            if inj not in enc.injections:
                raise PluginError(
                    f"plugin {name!r} outputs {inj.value!r} but declares injections "
                    f"{[i.value for i in enc.injections]}; add it to `injections`.")
            bb = enc.backbone
            if inj is Injection.CROSSATTN and (len(spec.shape) != 2 or spec.shape[1] != bb.context_dim):
                raise PluginError(
                    f"plugin {name!r}: crossattn spec {spec.shape} must be (tokens, "
                    f"context_dim={bb.context_dim}); project tokens to the backbone's context_dim.")
            if inj is Injection.CONCAT and (len(spec.shape) != 3 or spec.shape[1:] != bb.latent_size):
                raise PluginError(
                    f"plugin {name!r}: concat spec {spec.shape} must be (channels, "
                    f"{bb.latent_size[0]}, {bb.latent_size[1]}) at latent resolution.")
            if inj is Injection.VECTOR and len(spec.shape) != 1:
                raise PluginError(f"plugin {name!r}: vector spec {spec.shape} must be (dim,).")
            if inj is Injection.RESIDUAL:
                check_residual_spec(name, spec.taps, bb.residual_taps)
            if inj.inserts_layers:
                check_block_layers(name, enc, inj, spec.shape, bb.transformer_blocks)

    # -- derived dimensions -------------------------------------------------------------------
    def _sum_dim(self, inj: Injection, axis: int) -> int:
        return sum(s[inj].shape[axis] for s in self.specs.values() if inj in s)

    @property
    def concat_channels(self) -> int:
        """Channels added to the UNet input by concat plugins."""
        return self._sum_dim(Injection.CONCAT, 0)

    @property
    def vector_dim(self) -> int:
        """Width of the joined vector condition (0 when no vector plugin is enabled)."""
        return self._sum_dim(Injection.VECTOR, 0)

    @property
    def context_tokens(self) -> int:
        """Total cross-attention tokens (0 when no crossattn plugin is enabled)."""
        return self._sum_dim(Injection.CROSSATTN, 0)

    @property
    def uses_crossattn(self) -> bool:
        return self.context_tokens > 0

    # -- running ------------------------------------------------------------------------------
    def encode(self, name: str, value: Any) -> ConditionOutput:
        enc = self.encoders[name]
        if enc.trainable:
            out = enc(value)
        else:
            with torch.no_grad():
                out = enc(value)
        self._check_output(name, out)
        return out

    def null(self, name: str, batch_size: int) -> ConditionOutput:
        """Plugin ``name``'s null, checked against its spec like any other output."""
        out = self.encoders[name].null(batch_size)
        self._check_output(name, out, "null()")
        return out

    def _check_output(self, name: str, out: ConditionOutput, method: str = "forward()") -> None:
        specs = self.specs[name]
        if set(out) != set(specs):
            raise PluginError(f"plugin {name!r} {method} returned {[i.value for i in out]} but "
                              f"declared {[i.value for i in specs]} in output_specs().")
        for inj, spec in specs.items():
            val = out[inj]
            if inj is Injection.RESIDUAL:
                check_residual_output(name, val, spec.taps, method)
                continue
            tensor = val.values if isinstance(val, Tokens) else val
            if tuple(tensor.shape[1:]) != spec.shape:
                raise PluginError(f"plugin {name!r} {method} returned {inj.value} of shape "
                                  f"{tuple(tensor.shape[1:])} per sample; its spec says {spec.shape}.")
            if isinstance(val, Tokens) and val.mask.shape != tensor.shape[:2]:
                raise PluginError(f"plugin {name!r} {method} returned a token mask of shape "
                                  f"{tuple(val.mask.shape)} for tokens of shape "
                                  f"{tuple(tensor.shape)}; the mask must be (batch, tokens).")
            region = val.region if isinstance(val, Tokens) else None
            if region is not None and (inj is not Injection.DECOUPLED_CROSSATTN or region.dim() != 4
                                       or region.shape[:2] != (tensor.shape[0], 1)):
                raise PluginError(f"plugin {name!r} {method} returned a region of shape "
                                  f"{tuple(region.shape)} for {inj.value}; only decoupled_crossattn "
                                  f"tokens take one, shaped (batch, 1, H, W).")

    def forward(self, values: dict[str, Any], batch_size: int, *, drop: bool = False,
                keep: set[str] | None = None,
                generator: BatchRandom | torch.Generator | None = None) -> Conditioning:
        """Encode ``values`` (plugin name -> batched value, as ``resolve`` gives them; a raw
        data batch is resolved here, plugin by plugin) and route the outputs.

        ``drop``: apply each plugin's train-time ``drop_prob`` per sample (replaced by its null).
        ``keep``: plugins outside this set use their null (None keeps all); this is how guidance
        asks for the unconditional or a single-plugin branch.
        """
        outputs: dict[str, ConditionOutput] = {}
        for name, enc in self.encoders.items():
            if keep is not None and name not in keep:
                outputs[name] = self.null(name, batch_size)
                continue
            with _drawing(enc, generator):
                try:
                    value = values[name] if name in values else enc.batch_value(values)
                except KeyError:
                    raise PluginError(f"no value for condition {name!r} in {sorted(values)}; the "
                                      f"enabled conditions are {sorted(self.encoders)} and each "
                                      f"needs a value (cond.{name}=... when sampling).") from None
                out = self.encode(name, value)
            if drop and enc.config.drop_prob > 0:
                device = _first_tensor(out).device
                dropped = as_batch_random(generator).rand(batch_size).to(device)
                out = _where(dropped < enc.config.drop_prob, self.null(name, batch_size), out)
            outputs[name] = out
        return self.route(outputs)

    def resolve(self, batch: dict[str, Any], generator: BatchRandom | torch.Generator | None = None
                ) -> dict[str, Any]:
        """``batch`` with every enabled plugin's value under its name, derived values (a random
        hole, a downsampled image) drawn once: ``forward``, ``base`` and ``finish`` read these
        resolved values and never derive them again."""
        values = dict(batch)
        for name, enc in self.encoders.items():
            with _drawing(enc, generator), contextlib.suppress(KeyError):  # forward() names a missing value
                values[name] = enc.batch_value(batch)
        return values

    @torch.no_grad()
    def base(self, values: dict[str, Any]) -> torch.Tensor | None:
        """The base plugin's first estimate of the clean latents for ``values`` (resolved), or
        None when no enabled plugin gives one."""
        if self.base_plugin is None:
            return None
        return self.encoders[self.base_plugin].base(values[self.base_plugin]).float()

    @torch.no_grad()
    def loss_weight(self, values: dict[str, Any], shape: tuple[int, ...]) -> torch.Tensor | None:
        """The product of the enabled plugins' per-element loss weights (``loss_weight``) for
        ``values`` (resolved) and a diffusion target of ``shape``, or None when none gives one."""
        weight = None
        for name, enc in self.encoders.items():
            mine = enc.loss_weight(values[name])
            if mine is None:
                continue
            if problem := loss_weight_problem(mine, shape):
                raise PluginError(f"plugin {name!r}: {problem}")
            weight = mine.float() if weight is None else weight * mine.float()
        return weight

    def finish(self, images: torch.Tensor, values: dict[str, Any]) -> torch.Tensor:
        """Let every plugin post-process decoded samples, in enabling order."""
        for name, enc in self.encoders.items():
            images = enc.finish(images, values[name])
        return images

    def unconditional(self, batch_size: int) -> Conditioning:
        """Every plugin's null: the unconditional branch of classifier-free guidance."""
        return self.route({name: self.null(name, batch_size) for name in self.encoders})

    def route(self, outputs: dict[str, ConditionOutput]) -> Conditioning:
        """Join outputs by injection, in the (stable) order the encoders were enabled."""
        ctx, masks, concat, vector = [], [], [], []
        residual: dict[str, Residual] = {}
        gated, decoupled = [], []
        for name in self.encoders:
            for inj, val in outputs[name].items():
                if inj is Injection.CROSSATTN:
                    if val.steps != EVERY_STEP:
                        raise PluginError(f"plugin {name!r} gave its cross-attention tokens a step "
                                          f"window {val.steps}; windows apply to residual, "
                                          f"gated_attention and decoupled_crossattn outputs, "
                                          f"whose layers sampling can leave out.")
                    ctx.append(val.values)
                    masks.append(val.mask)
                elif inj is Injection.CONCAT:
                    concat.append(val)
                elif inj is Injection.VECTOR:
                    vector.append(val)
                elif inj is Injection.RESIDUAL:  # summed per tap in each UNet call
                    residual[name] = val
                elif inj is Injection.GATED_ATTENTION:
                    layers = self.encoders[name].block_layers()[inj]
                    gated.append(GatedTokens(layers, val.values, val.mask, val.steps))
                elif inj is Injection.DECOUPLED_CROSSATTN:
                    layers = self.encoders[name].block_layers()[inj]
                    decoupled.append(DecoupledTokens(layers, val.values, val.mask, val.region, val.steps))
        taps = {name: self.specs[name][Injection.RESIDUAL].taps for name in residual}
        return Conditioning(
            context=torch.cat(ctx, dim=1) if ctx else None,
            context_mask=torch.cat(masks, dim=1) if masks else None,
            concat=torch.cat(concat, dim=1) if concat else None,
            vector=torch.cat(vector, dim=1) if vector else None,
            residuals=Residuals(residual, taps) if residual else None,
            inserted=InsertedLayers(tuple(gated), tuple(decoupled)) if gated or decoupled else None,
        )


@contextlib.contextmanager
def _drawing(enc: ConditionEncoder, generator: BatchRandom | torch.Generator | None) -> Iterator[None]:
    """While inside, ``enc.random()`` draws from ``generator`` (a training step's); after, from
    torch's global generator again."""
    enc._random = None if generator is None else as_batch_random(generator)
    try:
        yield
    finally:
        enc._random = None


def _first_tensor(out: ConditionOutput) -> torch.Tensor:
    val = next(iter(out.values()))
    if isinstance(val, Residual):
        return val.weight
    return val.values if isinstance(val, Tokens) else val


def _where(cond: torch.Tensor, a: ConditionOutput, b: ConditionOutput) -> ConditionOutput:
    """Per-sample select: ``a`` where ``cond`` is True, else ``b``."""
    result: ConditionOutput = {}
    for inj, bv in b.items():
        av = a[inj]
        if isinstance(bv, Residual):
            result[inj] = av.where(cond, bv)
        elif isinstance(bv, Tokens):
            c = cond.view(-1, 1, 1)
            result[inj] = Tokens(torch.where(c, av.values.to(bv.values.dtype), bv.values),
                                 torch.where(cond.view(-1, 1), av.mask, bv.mask),
                                 _where_region(cond, av.region, bv.region))
        else:
            c = cond.view(-1, *([1] * (bv.dim() - 1)))
            result[inj] = torch.where(c, av.to(bv.dtype), bv)
    return result


def _where_region(cond: torch.Tensor, a: torch.Tensor | None, b: torch.Tensor | None
                  ) -> torch.Tensor | None:
    """Per-sample select of two regions, None standing for everywhere (ones)."""
    if a is None and b is None:
        return None
    like = a if a is not None else b
    a = torch.ones_like(like) if a is None else a
    b = torch.ones_like(like) if b is None else b
    if a.shape != b.shape:  # regions at different resolutions: meet at the finer one
        size = max(a.shape[-2:], b.shape[-2:])
        a, b = (torch.nn.functional.interpolate(r.float(), size=size, mode="bilinear") for r in (a, b))
    return torch.where(cond.view(-1, 1, 1, 1), a.to(b.dtype), b)
