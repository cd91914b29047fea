"""Rules of training and sampling: gradients reach a trainable encoder (and never a frozen
one), and a model with the plugin trains a few steps and samples, alone and beside the
built-ins."""

from __future__ import annotations

import torch

from ldmcore.build import build_model
from ldmcore.diffusion.guidance import Guidance
from ldmcore.model import denoiser_params
from ldmcore.testing.case import Broken
from ldmcore.testing.context import Context
from ldmcore.testing.kit import IMAGE_SIZE, EncoderPlugin, isolated_registry, kit_config
from ldmcore.testing.outputs import batch_size_of, output_parts


def rule_gradients(ctx: Context) -> None:
    enc = ctx.encoder()
    enc.train()
    cond = ctx.conditioner(enc)
    b = batch_size_of(ctx.batch())
    out = ctx.run("forward()", lambda: cond.encode(ctx.case.name, ctx.value(enc)))
    null = ctx.run("null()", lambda: enc.null(b))
    tensors = [t for o in (out, null) for t, _ in output_parts(o).values()]
    params = dict(enc.named_parameters())
    if enc.trainable:
        if not any(p.requires_grad for p in params.values()):
            raise Broken("it declares trainable = True but has no trainable parameters; "
                          "declare trainable = False.")
        # a fixed random linear read-out: its gradient is not zero where an output is (a
        # zero-initialised last layer), as a squared norm's would be
        g = torch.Generator().manual_seed(0)
        loss = sum((t.float() * torch.randn(t.shape, generator=g)).mean() for t in tensors
                   if t.requires_grad)
        if not isinstance(loss, torch.Tensor):
            raise Broken("it declares trainable = True but no output depends on a parameter.")
        loss.backward()
        grads = {k: p.grad for k, p in params.items() if p.grad is not None}
        if not any(g.abs().sum() > 0 for g in grads.values()):
            raise Broken("it declares trainable = True but no parameter receives a gradient.")
        bad = [k for k, g in grads.items() if not torch.isfinite(g).all()]
        if bad:
            raise Broken(f"non-finite gradients at {bad[:3]}.")
    else:
        for what, o in (("forward()", out), ("null()", null)):
            if any(t.requires_grad for t, _ in output_parts(o).values()):
                raise Broken(f"it is frozen (trainable = False) but its {what} output requires "
                              f"grad, so the diffusion loss would backpropagate into it.")
        leaking = [k for k, p in params.items() if p.requires_grad]
        if leaking:
            raise Broken(f"it is frozen but parameters {leaking[:3]} still require grad.")


def rule_train_sample(ctx: Context) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # smoke-size models: extra threads only add OpenMP overhead
    try:
        _train_sample(ctx)
    finally:
        torch.set_num_threads(threads)


def _train_sample(ctx: Context) -> None:
    case, name = ctx.case, ctx.case.name
    builtins = isolated_registry(builtins=True)
    batch = ctx.batch()
    beside = {}
    for other, cls in builtins.encoders.items():
        if other == name:
            continue
        probe = cls(cls.Config(), ctx.spec)
        try:
            probe.batch_value(batch)
        except KeyError:
            continue
        beside[other] = cls
    for label, extra in (("alone", {}), (f"beside {sorted(beside)}", beside)):
        if label != "alone" and not extra:
            continue
        reg = isolated_registry(EncoderPlugin([case.encoder, *extra.values()]))
        cfg = kit_config(case, {name: case.config, **{k: {} for k in extra}})
        torch.manual_seed(0)
        model = ctx.run(f"building a model with it {label}", lambda: build_model(cfg, registry=reg))
        params = denoiser_params(model)
        enc = model.conditioner.encoders[name]
        mine = {k: p for k, p in enc.named_parameters()}
        if enc.trainable and any(p.requires_grad for p in mine.values()):
            if not any(p is q for p in mine.values() for q in params.values()):
                raise Broken(f"{label}: its parameters are not among the trained parameters.")
        frozen = {k: p.detach().clone() for k, p in mine.items()} if not enc.trainable else {}
        opt = torch.optim.AdamW(params.values(), lr=1e-3)
        model.train()
        for step in range(3):  # zero-initialised output convs: step 3 is the first to reach it
            opt.zero_grad(set_to_none=True)
            loss = ctx.run(f"the diffusion loss {label}", lambda s=step: model.loss(
                batch, generator=torch.Generator().manual_seed(s)))
            if not torch.isfinite(loss):
                raise Broken(f"{label}: the diffusion loss is {loss.item()}.")
            loss.backward()
            opt.step()
        if enc.trainable and mine and label == "alone":
            if not any(p.grad is not None and p.grad.abs().sum() > 0 for p in mine.values()):
                raise Broken("the diffusion loss sends no gradient into it (trainable = True).")
        for k, before in frozen.items():
            if not torch.equal(before, mine[k].detach()):
                raise Broken(f"{label}: parameter {k} of a frozen encoder changed in training.")
        model.eval()
        if label == "alone" and (texts := ctx.cli_values()):
            parsed = [enc.parse(texts[0])] * 2
            values = {name: enc.collate(parsed)}
        else:
            values = {k: v[:2] for k, v in batch.items()}
        images = ctx.run(f"sampling {label}", lambda: model.sample(
            values, 2, model.sampling.but(steps=2, guidance=Guidance(scale=2.0)),
            generator=torch.Generator().manual_seed(0)))
        want = (2, case.image_channels, IMAGE_SIZE, IMAGE_SIZE)
        if tuple(images.shape) != want or not torch.isfinite(images).all():
            raise Broken(f"sampling {label} gave images of shape {tuple(images.shape)} "
                          f"(expected {want}) or non-finite values.")
