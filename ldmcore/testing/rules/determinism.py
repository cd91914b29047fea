"""Rules of repeatable outputs: the same value encodes the same (alone or in a batch), a base
and a loss weight are the same twice, and a safetensors round trip keeps every output."""

from __future__ import annotations

import torch

from ldmcore import checkpoint
from ldmcore.conditioning.sample_shaping import loss_weight_problem
from ldmcore.errors import LdmError
from ldmcore.testing.case import Broken
from ldmcore.testing.context import Context
from ldmcore.testing.outputs import batch_size_of, output_row, same_output


def rule_determinism(ctx: Context) -> None:
    enc = ctx.encoder()
    enc.eval()
    value = ctx.value(enc)  # drawn once: a batch value may be random (e.g. train-time holes)
    with torch.no_grad():
        a = ctx.run("forward()", lambda: enc(value))
        if not same_output(a, enc(value)):
            raise Broken("two forward() calls on the same value differ in eval mode.")
        # each sample alone vs in a batch, through parse + collate (the contract's own slicing)
        parsed = [ctx.run(f"parse({t!r})", lambda t=t: enc.parse(t)) for t in ctx.cli_values()]
        if len(parsed) < 2:
            return
        together = ctx.run("forward()", lambda: enc(enc.collate(parsed)))
        for i, one in enumerate(parsed):
            alone = enc(enc.collate([one]))
            if not same_output(output_row(together, i), alone, atol=1e-4):
                raise Broken(f"cli value {i} encodes differently alone than in a batch; an "
                              f"encoder must treat samples independently (no batch statistics).")


def rule_base(ctx: Context) -> None:
    """A plugin that provides a base gives a deterministic, finite estimate of the clean latents."""
    enc = ctx.encoder()
    if not enc.provides_base:
        return
    enc.eval()
    value = ctx.value(enc)  # drawn once, as the model does for the encoders and the base
    bb = enc.backbone
    want = (batch_size_of(ctx.batch()), bb.latent_channels, *bb.latent_size)
    base = ctx.run("base()", lambda: enc.base(value))
    if not isinstance(base, torch.Tensor) or tuple(base.shape) != want or not torch.isfinite(base).all():
        got = tuple(base.shape) if isinstance(base, torch.Tensor) else type(base).__name__
        raise Broken(f"base() returned {got}; it must be a finite tensor (batch, latent_channels, "
                      f"*latent_size) = {want}, an estimate of the clean latents.")
    if not torch.equal(base, enc.base(value)):
        raise Broken("two base() calls on the same value differ; the model adds back the base it "
                      "subtracted, so it must be deterministic.")


def rule_loss_weight(ctx: Context) -> None:
    """A plugin that weighs the training loss gives finite, non-negative weights at the diffusion
    space's size, the same twice."""
    enc = ctx.encoder()
    enc.eval()
    value = ctx.value(enc)
    weight = ctx.run("loss_weight()", lambda: enc.loss_weight(value))
    if weight is None:
        return
    bb = enc.backbone
    if problem := loss_weight_problem(weight, (batch_size_of(ctx.batch()), bb.latent_channels,
                                               *bb.latent_size)):
        raise Broken(problem)
    if not torch.equal(weight, enc.loss_weight(value)):
        raise Broken("two loss_weight() calls on the same value differ; weights are read from the "
                      "value, which the Conditioner draws once per step.")


def rule_save_load(ctx: Context) -> None:
    enc = ctx.encoder(seed=0)
    enc.eval()
    path = ctx.tmp / "encoder.safetensors"
    state = enc.state_dict()
    fresh = ctx.encoder(seed=1)
    if state:  # a stateless encoder has nothing to save; its fresh copy must still agree
        ctx.run("saving the state_dict as safetensors", lambda: checkpoint.save(path, state))
        tensors, _ = checkpoint.load(path)
        try:
            checkpoint.load_into(fresh, tensors, f"plugin {ctx.case.name!r}", path)
        except LdmError as err:
            raise Broken(str(err)) from None
    fresh.eval()
    value = ctx.value(enc)
    with torch.no_grad():
        if not same_output(enc(value), fresh(value)) or not same_output(enc.null(2), fresh.null(2)):
            raise Broken("outputs differ after a safetensors save/load round trip: state that "
                          "shapes the outputs is missing from state_dict() (make learned nulls "
                          "nn.Parameters and fixed tables persistent buffers).")
