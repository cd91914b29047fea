"""Rules of plugins that insert layers into the transformer blocks (``gated_attention``,
``decoupled_crossattn``): zero effect at init, a gate training opens, layers owned by the plugin,
removal restores the backbone, save/load of the layers (docs/conformance.md).

Each builds the kit model with the plugin alone, its backbone's zero-initialised tensors drawn at
random as a trained backbone has them (so every path reaches the output), and compares the UNet
with and without the plugin's layers (``Conditioning.inserted``). A plugin that inserts no layers
passes them trivially."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from ldmcore import checkpoint
from ldmcore.build import build_model
from ldmcore.errors import LdmError
from ldmcore.testing.case import Broken
from ldmcore.testing.context import Context
from ldmcore.testing.kit import EncoderPlugin, isolated_registry, kit_config
from ldmcore.testing.outputs import batch_size_of


@dataclass
class _Inserting:
    model: Any
    values: dict[str, Any]
    z: torch.Tensor
    t: torch.Tensor

    def outputs(self, values: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The UNet's output with the plugin's layers and without them."""
        values = self.values if values is None else values
        with torch.no_grad():
            cond = self.model.conditioner(values, len(self.z))
            with_layers = self.model.network(self.z, self.t, cond)
            return with_layers, self.model.network(self.z, self.t, replace(cond, inserted=None))

    def backbone(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.model.state_dict().items() if not k.startswith("conditioner.")}

    def plugin_params(self, name: str) -> list[torch.nn.Parameter]:
        return [p for p in self.model.conditioner.encoders[name].parameters() if p.requires_grad]


def _inserting(ctx: Context, trained: bool = False) -> _Inserting | None:
    """The kit model with the plugin alone (None when it inserts no layers); ``trained``: after
    one AdamW step of the diffusion loss on the plugin's parameters alone."""
    case, name = ctx.case, ctx.case.name
    enc = ctx.encoder()
    if not any(i.inserts_layers for i in ctx.run("output_specs()", enc.output_specs)):
        return None
    reg = isolated_registry(EncoderPlugin([case.encoder]))
    cfg = kit_config(case, {name: {**case.config, "drop_prob": 0.0}})
    torch.manual_seed(0)
    model = ctx.run("building a model with it", lambda: build_model(cfg, registry=reg))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.unet.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    batch = ctx.batch()
    b = batch_size_of(batch)
    kit = _Inserting(model, model.conditioner.resolve(batch), torch.randn(b, *model.latent_shape(), generator=g),
                     torch.linspace(10, model.schedule.num_timesteps - 10, b).long())
    if trained:
        opt = torch.optim.AdamW(kit.plugin_params(name), lr=1e-2, weight_decay=0.0)
        model.train()
        loss = ctx.run("the diffusion loss", lambda: model.loss(batch, generator=torch.Generator().manual_seed(0)))
        loss.backward()
        layers = [p for mods in model.conditioner.encoders[name].block_layers().values()
                  for m in mods for p in m.parameters()]
        if not any(p.grad is not None and p.grad.abs().sum() > 0 for p in layers):
            raise Broken("the diffusion loss sends no gradient into its inserted layers: a layer "
                          "that starts at zero effect needs a trainable gate or zero-initialised "
                          "projection the loss can open (a constant zero is no gate).")
        opt.step()
    model.eval()
    return kit


def rule_zero_effect(ctx: Context) -> None:
    kit = _inserting(ctx)
    if kit is None:
        return
    b = len(kit.z)
    for what, values in (("forward()", kit.values), ("null()", None)):
        if values is None:  # the null: every sample dropped
            cond = kit.model.conditioner(kit.values, b, keep=set())
            with torch.no_grad():
                with_layers = kit.model.network(kit.z, kit.t, cond)
                without = kit.model.network(kit.z, kit.t, replace(cond, inserted=None))
        else:
            with_layers, without = kit.outputs(values)
        if not torch.equal(with_layers, without):
            raise Broken(f"freshly built, its layers change the backbone's output (by up to "
                          f"{float((with_layers - without).abs().max()):.3g}, tokens of {what}); they "
                          f"must start at zero effect (a gate tanh(0), a zero value projection) so "
                          f"attaching it to a pretrained model changes nothing at step 0.")


def rule_gate(ctx: Context) -> None:
    kit = _inserting(ctx, trained=True)
    if kit is None:
        return
    with_layers, without = kit.outputs()
    if torch.equal(with_layers, without):
        raise Broken("after a training step its layers still have no effect on the output: the "
                      "gate never opens (zero effect at init must come from a trainable gate or "
                      "zero-initialised projection, not from layers that are not wired in).")


def rule_owned_layers(ctx: Context) -> None:
    kit = _inserting(ctx)  # building it runs the Conditioner's ownership checks, naming the plugin
    if kit is None:
        return
    unet = kit.model.unet
    with torch.device("meta"):
        alone = set(type(unet)(unet.shape).state_dict())
    if set(unet.state_dict()) != alone:
        extra = sorted(set(unet.state_dict()) - alone)
        raise Broken(f"the backbone gained tensors {extra[:3]} with the plugin; its layers must "
                      f"be the encoder's own submodules, never the UNet's.")


def rule_removal(ctx: Context) -> None:
    kit = _inserting(ctx)
    if kit is None:
        return
    _, before = kit.outputs()
    backbone = kit.backbone()
    trained = _inserting(ctx, trained=True)
    after = trained.backbone()
    moved = [k for k, v in backbone.items() if not torch.equal(v, after[k])]
    if moved:
        raise Broken(f"training the plugin alone changed backbone tensors {moved[:3]}; removing "
                      f"it would not restore the backbone.")
    _, without = trained.outputs()
    if not torch.equal(before, without):
        raise Broken("after training the plugin, the output without its layers differs from the "
                      "backbone's own: removing it does not restore the backbone exactly.")


def rule_layers_save_load(ctx: Context) -> None:
    kit = _inserting(ctx, trained=True)
    if kit is None:
        return
    name = ctx.case.name
    want, _ = kit.outputs()
    path = ctx.tmp / "plugin.safetensors"
    enc = kit.model.conditioner.encoders[name]
    ctx.run("saving the state_dict as safetensors", lambda: checkpoint.save(path, enc.state_dict()))
    fresh = ctx.encoder(seed=1)
    tensors, _ = checkpoint.load(path)
    try:
        checkpoint.load_into(fresh, tensors, f"plugin {name!r}", path)
    except LdmError as err:
        raise Broken(str(err)) from None
    kit.model.conditioner.encoders[name] = fresh.eval()
    got, _ = kit.outputs()
    if not torch.equal(got, want):
        raise Broken("after a safetensors round trip of its state_dict the model's output "
                      "differs: its inserted layers' trained state (gates, projections) is not all "
                      "in the encoder's state_dict (register the layers as submodules and keep "
                      "fixed tensors as persistent buffers).")
