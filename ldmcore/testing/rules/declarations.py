"""Rules of what a plugin declares and returns: its declarations, output specs, ``forward()``
outputs and key-padding masks, and the hook module that registers it."""

from __future__ import annotations

import re

import torch
from pydantic import ValidationError

from ldmcore.conditioning import ConditionEncoder, EncoderConfig, Injection, Tokens
from ldmcore.config import load
from ldmcore.errors import LdmError
from ldmcore.testing.case import Broken
from ldmcore.testing.context import Context
from ldmcore.testing.kit import isolated_registry
from ldmcore.testing.outputs import batch_size_of, check_output

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def rule_declaration(ctx: Context) -> None:
    cls = ctx.case.encoder
    if not (isinstance(cls, type) and issubclass(cls, ConditionEncoder)):
        raise Broken(f"{cls!r} is not a ConditionEncoder subclass.")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise Broken(f"`name` is {name!r}; it must be a lower-case identifier such as 'edges' "
                      f"(users write it as conditions.<name> and cond.<name>=...).")
    injections = getattr(cls, "injections", None)
    if not injections or not all(isinstance(i, Injection) for i in injections):
        raise Broken(f"`injections` is {injections!r}; declare a non-empty tuple of Injection "
                      f"members (routing is declared, never guessed).")
    if not (isinstance(cls.Config, type) and issubclass(cls.Config, EncoderConfig)):
        raise Broken("`Config` must subclass ldmcore.conditioning.EncoderConfig (it carries "
                      "drop_prob and forbids unknown keys).")
    if cls.Config.model_config.get("extra") != "forbid":
        raise Broken("`Config` accepts unknown keys; keep EncoderConfig's extra='forbid'.")
    if not isinstance(cls.trainable, bool):
        raise Broken(f"`trainable` is {cls.trainable!r}; it must be True or False.")
    ctx.config()
    try:
        cls.Config(**{**ctx.case.config, "no_such_key_": 1})
    except ValidationError:
        pass
    else:
        raise Broken("its Config accepted the unknown key 'no_such_key_'.")


def rule_output_spec(ctx: Context) -> None:
    enc = ctx.encoder()
    specs = ctx.run("output_specs()", enc.output_specs)
    if not isinstance(specs, dict):
        raise Broken(f"output_specs() returned {type(specs).__name__}, not a dict.")
    ctx.conditioner(enc)  # injections declared, shapes fit the backbone; names the plugin


def rule_forward(ctx: Context) -> None:
    enc = ctx.encoder()
    cond = ctx.conditioner(enc)
    value = ctx.value(enc)
    out = ctx.run("forward()", lambda: enc(value))
    check_output(ctx, cond, out, "forward()", batch_size_of(ctx.batch()))


def rule_key_padding_mask(ctx: Context) -> None:
    enc = ctx.encoder()
    cond = ctx.conditioner(enc)
    # softmax over no key is NaN; a gated layer always attends the visual tokens too
    attended = [i for i in (Injection.CROSSATTN, Injection.DECOUPLED_CROSSATTN)
                if i in cond.specs[ctx.case.name]]
    if not attended:
        return
    b = batch_size_of(ctx.batch())
    for what, out in (("forward()", ctx.run("forward()", lambda: enc(ctx.value(enc)))),
                      ("null()", ctx.run("null()", lambda: enc.null(b)))):
        tokens = out.get(attended[0])
        if not isinstance(tokens, Tokens):
            raise Broken(f"{what} returned no Tokens for {attended[0].value}.")
        if tokens.mask.dtype != torch.bool or tokens.mask.shape != tokens.values.shape[:2]:
            raise Broken(f"{what} returned a mask of {tokens.mask.dtype} {tuple(tokens.mask.shape)}"
                          f"; it must be bool (batch, tokens) = {tuple(tokens.values.shape[:2])}.")
        if not tokens.mask.any(dim=1).all():
            raise Broken(f"{what} returned a sample whose mask attends no token.")


def rule_registration(ctx: Context) -> None:
    """The hook module registers the encoder, and every config file it ships composes."""
    plugin = ctx.case.plugin
    if plugin is None:
        return
    try:
        reg = isolated_registry(plugin, builtins=True)
    except LdmError as err:
        raise Broken(f"registering the plugin module failed: {err}") from None
    if reg.encoders.get(ctx.case.name) is not ctx.case.encoder:
        raise Broken(f"the plugin module does not register {ctx.case.encoder.__qualname__} "
                      f"through register_conditions.")
    for d in reg.config_dirs:
        if d.package == "ldmcore":
            continue
        for path in sorted(d.path.glob("*/*.yaml")):
            group, option = path.parent.name, path.stem
            override = f"{group}=[{option}]" if group == "condition" else f"{group}={option}"
            try:
                cfg = load([override], reg)
            except LdmError as err:
                raise Broken(f"its config {group}/{path.name} does not compose and validate: "
                              f"{err}") from None
            if group == "condition" and option not in cfg.conditions:
                raise Broken(f"its config condition/{path.name} does not land in "
                              f"conditions.{option}; start it with '# @package "
                              f"conditions.{option}'.")
