"""Rules of the residual injection (ControlNet, T2I-Adapter): attached, the plugin leaves the
backbone's output unchanged; what it adds is its own; trained alone it leaves the backbone as it
was; its file holds everything it adds."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ldmcore import checkpoint
from ldmcore.attach import load_plugin_weights, plugin_tensors
from ldmcore.build import build_model
from ldmcore.conditioning import Injection, UNetInput
from ldmcore.errors import LdmError
from ldmcore.testing.case import Broken
from ldmcore.testing.context import Context
from ldmcore.testing.kit import EncoderPlugin, isolated_registry, kit_config
from ldmcore.testing.outputs import batch_size_of


def _residual_model(ctx: Context) -> Any:
    """The kit's tiny model with the plugin alone, its UNet random (as a trained one, zero
    layers included), so that an effect on the backbone's output shows; None for a plugin
    without a residual output."""
    enc = ctx.encoder()
    if Injection.RESIDUAL not in ctx.run("output_specs()", enc.output_specs):
        return None
    reg = isolated_registry(EncoderPlugin([ctx.case.encoder]))
    torch.manual_seed(0)
    model = ctx.run("building a model with it", lambda: build_model(
        kit_config(ctx.case, {ctx.case.name: ctx.case.config}), registry=reg))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.unet.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        enc = model.conditioner.encoders[ctx.case.name]
        enc.init_from_backbone(model.unet)  # as attaching to a pretrained run does
    return model.eval()


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random: a plugin as it is after training, with an effect to see."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _residual_call(ctx: Context, model: Any) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """(conditioning of the kit's batch, z_t, t) for one network call."""
    batch = ctx.batch()
    b = batch_size_of(batch)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(b, *model.latent_shape(), generator=g)
    t = torch.randint(0, model.schedule.num_timesteps, (b,), generator=g)
    values = model.conditioner.resolve(batch)
    return ctx.run("the conditioner", lambda: model.conditioner(values, b)), z, t


def _without_residuals(cond: Any) -> Any:
    return replace(cond, residuals=None)


@torch.no_grad()
def rule_residual_zero_init(ctx: Context) -> None:
    """Attached, the plugin leaves the backbone's output unchanged bit for bit."""
    model = _residual_model(ctx)
    if model is None:
        return
    cond, z, t = _residual_call(ctx, model)
    maps = ctx.run("the residual maps", lambda: cond.residuals.maps(UNetInput(z, t, cond.context,
                                                                             cond.context_mask, cond.vector)))
    largest = max(float(m.abs().max()) for m in maps.values())
    if largest != 0.0 or not torch.equal(model.network(z, t, cond),
                                         model.network(z, t, _without_residuals(cond))):
        raise Broken(f"its residual maps are not zero at initialisation (largest |value| "
                      f"{largest:.3g}), so attaching it changes the pretrained model's output; "
                      f"zero-initialise the last layer of every output (a 1x1 convolution, or a "
                      f"gain) so that it starts at no effect.")


def _backbone_state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.unet.state_dict().items()}


def rule_residual_ownership(ctx: Context) -> None:
    """What the plugin adds is its own: no backbone tensor is shared with it or added for it."""
    model = _residual_model(ctx)
    if model is None:
        return
    enc = model.conditioner.encoders[ctx.case.name]
    backbone = {p.data_ptr() for p in model.unet.parameters()}
    shared = [k for k, p in enc.named_parameters() if p.data_ptr() in backbone]
    if shared:
        raise Broken(f"its parameters {shared[:3]} are the backbone's own tensors, so training "
                      f"it trains the backbone; copy them (copy.deepcopy, or load_state_dict into "
                      f"a module of its own) in init_from_backbone.")
    bare = build_model(kit_config(ctx.case, {}), registry=isolated_registry())
    want = {k: tuple(v.shape) for k, v in bare.unet.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in model.unet.state_dict().items()}
    if got != want:
        extra = sorted(set(got) ^ set(want)) or [k for k in got if got[k] != want[k]]
        raise Broken(f"enabling it changes the backbone's tensors ({extra[:3]}); a residual "
                      f"plugin keeps what it adds in its own modules, saved with it.")


def rule_residual_removal(ctx: Context) -> None:
    """Trained alone (``trainer.train_only=[plugins]``), the plugin leaves the backbone byte for
    byte as it was, so removing it restores the pretrained model exactly."""
    model = _residual_model(ctx)
    if model is None:
        return
    enc = model.conditioner.encoders[ctx.case.name]
    before = _backbone_state(model)
    _randomise(enc, 3)
    ctx.run("init_from_backbone()", lambda: enc.init_from_backbone(model.unet))
    params = [p for p in enc.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    model.train()
    for step in range(2):
        opt.zero_grad(set_to_none=True)
        ctx.run("the diffusion loss", lambda s=step: model.loss(
            ctx.batch(), generator=torch.Generator().manual_seed(s))).backward()
        opt.step()
    model.eval()
    moved = [k for k, v in model.unet.state_dict().items() if not torch.equal(v, before[k])]
    if moved:
        raise Broken(f"attaching and training it alone changed the backbone's {moved[:3]}; a "
                      f"residual plugin never writes into the backbone, so that removing it "
                      f"gives back the pretrained model.")
    bare = build_model(kit_config(ctx.case, {}), registry=isolated_registry()).eval()
    bare.unet.load_state_dict(before)
    cond, z, t = _residual_call(ctx, model)
    with torch.no_grad():
        null = model.conditioner.unconditional(z.shape[0])
        if not torch.equal(model.network(z, t, null), bare.network(z, t, bare.conditioner({}, z.shape[0]))):
            raise Broken("its null does not give the backbone alone: the unconditional branch of "
                          "guidance must be the model without the plugin (weight 0).")


def rule_residual_save_load(ctx: Context) -> None:
    """Its file (``RUN/plugins/<name>.safetensors``) holds everything it adds: loaded into a
    fresh model with the same backbone, it gives the same output."""
    model = _residual_model(ctx)
    if model is None:
        return
    name = ctx.case.name
    _randomise(model.conditioner.encoders[name], 4)
    path = ctx.tmp / f"{name}.safetensors"
    ctx.run("saving its weights", lambda: checkpoint.save(path, plugin_tensors(model, name, None)))
    torch.manual_seed(5)
    fresh = build_model(kit_config(ctx.case, {name: ctx.case.config}),
                        registry=isolated_registry(EncoderPlugin([ctx.case.encoder]))).eval()
    fresh.unet.load_state_dict(model.unet.state_dict())
    try:
        load_plugin_weights(fresh, name, path)
    except LdmError as err:
        raise Broken(f"its saved weights do not load into a fresh model: {err}") from None
    cond, z, t = _residual_call(ctx, model)
    cond2, _, _ = _residual_call(ctx, fresh)
    with torch.no_grad():
        a, b = model.network(z, t, cond), fresh.network(z, t, cond2)
    if not torch.equal(a, b):
        raise Broken(f"a fresh model with its saved weights differs by {float((a - b).abs().max()):.3g}: "
                      f"state that shapes its maps is missing from state_dict() (register copies "
                      f"and gains as modules and parameters).")
