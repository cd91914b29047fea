"""Conformance kit for condition plugins: run it from a plugin's own test suite.

Like scikit-learn's ``check_estimator`` or diffusers' shared tester mixins, it checks the
plugin contract against a plugin, with tiny models, in a few seconds::

    from ldmcore.testing import ConformanceTests, PluginCase

    class TestEdgesConformance(ConformanceTests):          # one pytest test per rule
        case = PluginCase(EdgesEncoder, config={"channels": 2}, cli_values=edge_pngs,
                          plugin=ldm_edges)

or, in one call, ``check_plugin(case)``, which raises ``ConformanceError`` listing every rule the
plugin breaks. Each rule has a name (``RULES``, documented in docs/conformance.md), and every
failure message starts with it: ``plugin 'edges' breaks rule 'null': ...``.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import tempfile
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import torch
from pydantic import ValidationError

from ldmcore import checkpoint
from ldmcore.attach import load_plugin_weights, plugin_tensors
from ldmcore.build import backbone_spec, build_autoencoder, build_dataset, build_model, frozen_encoder
from ldmcore.conditioning import (FILE_KINDS, BackboneSpec, ConditionEncoder, ConditionOutput,
                                  Conditioner, Conditioning, EncoderConfig, Injection, Residual,
                                  Tokens, UNetInput, Widget, WidgetKind, read_value)
from ldmcore.config import load, validate
from ldmcore.data.datasets import collate
from ldmcore.diffusion.guidance import Guidance
from ldmcore.errors import LdmError
from ldmcore.hookspecs import hookimpl
from ldmcore.model import denoiser_params
from ldmcore.registry import ENTRY_POINT_GROUP, build_registry

__all__ = ["RULES", "ConformanceError", "ConformanceTests", "PluginCase", "builtin_plugin_modules",
           "check_plugin", "check_rule", "isolated_registry", "kit_config"]


class ConformanceError(AssertionError):
    """A plugin breaks one or more conformance rules; ``rules`` names them."""

    def __init__(self, plugin: str, failures: dict[str, str]) -> None:
        self.plugin, self.failures, self.rules = plugin, failures, list(failures)
        lines = [f"plugin {plugin!r} breaks rule {rule!r}: {why}" for rule, why in failures.items()]
        super().__init__("\n".join(lines))


class _Broken(Exception):
    """Raised inside a rule; the kit turns it into a ConformanceError naming the rule."""


@dataclass
class PluginCase:
    """What the kit needs to exercise one condition encoder.

    ``cli_values``: strings a user writes as ``cond.<name>=...`` (or a function of a temporary
    folder returning them, e.g. to write a PNG first); at least one, two or more to check that
    samples encode independently. ``bad_cli_values``: strings (or such a function) ``parse`` must
    reject with an ``LdmError``. ``dataset``: a built-in dataset whose batches carry this
    condition's value (read through ``batch_value``); or ``batch``, a function returning a
    collated batch. ``plugin``: the hook module, to check registration and shipped configs.
    """

    encoder: type[ConditionEncoder]
    config: Mapping[str, Any] = field(default_factory=dict)
    cli_values: Sequence[str] | Callable[[Path], Sequence[str]] = ()
    bad_cli_values: Sequence[str] | Callable[[Path], Sequence[str]] = ()
    dataset: str = "digits"
    image_channels: int = 1
    batch: Callable[[], dict[str, Any]] | None = None
    plugin: ModuleType | object | None = None
    batch_size: int = 4

    @property
    def name(self) -> str:
        return getattr(self.encoder, "name", "") or self.encoder.__qualname__


# -- the tiny backbone every rule uses ---------------------------------------------------------

IMAGE_SIZE = 16


def kit_config(case: PluginCase, conditions: Mapping[str, Mapping[str, Any]]) -> Any:
    """A validated smoke-size ExperimentConfig (16x16 images, f=2, a 16-channel UNet)."""
    return validate({
        "name": "conformance", "run_dir": "runs/conformance",
        "data": {"name": case.dataset, "image_size": IMAGE_SIZE, "channels": case.image_channels},
        "autoencoder": {"ch": 16, "ch_mult": [1, 2], "norm_groups": 8, "latent_channels": 2},
        "model": {"unet": {"model_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
                           "attention_levels": [1], "num_head_channels": 16, "context_dim": 32,
                           "norm_groups": 8}},
        "trainer": {"precision": "fp32"},
        "conditions": {k: dict(v) for k, v in conditions.items()},
    })


def _backbone(case: PluginCase) -> BackboneSpec:
    """The kit backbone's spec, with the frozen first stage a plugin may use (``encode``)."""
    spec = backbone_spec(kit_config(case, {}))
    return replace(spec, encode=frozen_encoder(_autoencoder(case.image_channels)))


@lru_cache(maxsize=2)
def _autoencoder(image_channels: int) -> Any:
    rng = torch.get_rng_state()
    torch.manual_seed(0)
    ae = build_autoencoder(kit_config(PluginCase(ConditionEncoder, image_channels=image_channels), {}))
    torch.set_rng_state(rng)
    return ae.requires_grad_(False).eval()


@lru_cache(maxsize=4)
def _dataset_batch(name: str, channels: int, size: int) -> dict[str, Any]:
    ds = build_dataset(name, path=None, image_size=IMAGE_SIZE, channels=channels, hflip=False,
                       shift=0.0)
    step = max(1, len(ds) // size)
    return collate([ds[i * step] for i in range(size)])


def builtin_plugin_modules() -> list[ModuleType]:
    """The hook modules of ldmcore's own plugins, read from its entry points (whatever
    ``LDM_LOAD_PLUGINS`` or ``LDM_DISABLE_ENTRY_POINTS`` say)."""
    return [ep.load() for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
            if ep.dist is not None and ep.dist.metadata["Name"] == "ldmcore"]


def isolated_registry(*plugins: ModuleType | object, builtins: bool = False):
    """A registry holding only ``plugins`` (and ldmcore's built-ins when asked); no other
    installed package is loaded."""
    reg = build_registry(load_entry_points=False)
    if builtins:
        for module in builtin_plugin_modules():
            if module not in plugins:
                reg.add_module(module, package="ldmcore")
    for p in plugins:
        reg.add_module(p)
    return reg


class _EncoderPlugin:
    """A plugin object registering given classes (how the kit registers a case's encoder)."""

    def __init__(self, classes: Sequence[type]) -> None:
        self.classes = list(classes)

    @hookimpl
    def register_conditions(self, register: Callable[[type], None]) -> None:
        for cls in self.classes:
            register(cls)


# -- what every rule shares --------------------------------------------------------------------

class _Context:
    """Lazily built pieces (encoder, batch, value) shared by the rules of one case."""

    def __init__(self, case: PluginCase, tmp: Path) -> None:
        self.case, self.tmp = case, tmp
        self.spec = _backbone(case)

    def config(self, **update: Any) -> EncoderConfig:
        try:
            return self.case.encoder.Config(**{**self.case.config, **update})
        except ValidationError as err:
            raise _Broken(f"its Config rejects the case's config {dict(self.case.config)}: "
                          f"{err.errors()[0]['msg']}") from None

    def encoder(self, seed: int = 0, **update: Any) -> ConditionEncoder:
        torch.manual_seed(seed)
        try:
            return self.case.encoder(self.config(**update), self.spec)
        except _Broken:
            raise
        except Exception as exc:
            raise _Broken(f"constructing it failed: {type(exc).__name__}: {exc}") from None

    def batch(self) -> dict[str, Any]:
        if self.case.batch is not None:
            return self.case.batch()
        # a copy: a rule (or a plugin) adding keys must not change the cached batch
        return dict(_dataset_batch(self.case.dataset, self.case.image_channels, self.case.batch_size))

    def value(self, enc: ConditionEncoder, batch: dict[str, Any] | None = None) -> Any:
        batch = self.batch() if batch is None else batch
        try:
            return enc.batch_value(batch)
        except KeyError as exc:
            raise _Broken(f"batch_value() found no value ({exc}) in a batch of the "
                          f"{self.case.dataset!r} dataset with keys {sorted(batch)}; set "
                          f"PluginCase.dataset or PluginCase.batch to data that carries it.") from None

    def conditioner(self, enc: ConditionEncoder) -> Conditioner:
        try:
            return Conditioner({self.case.name: enc})
        except LdmError as err:
            raise _Broken(str(err)) from None

    def run(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except NotImplementedError as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1].name
            raise _Broken(f"{where}() is not implemented." if what.startswith(where) else
                          f"{what} failed: {where}() is not implemented.") from None
        except _Broken:
            raise
        except Exception as exc:
            raise _Broken(f"{what} raised {type(exc).__name__}: {exc}") from None

    def cli_values(self, bad: bool = False) -> list[Any]:
        """The case's command-line strings as ``parse`` receives them: decoded once by
        ``read_value``, as ``ldm sample`` decodes ``cond.<name>=...``."""
        values = self.case.bad_cli_values if bad else self.case.cli_values
        if callable(values):
            values = values(self.tmp)
        return [read_value(str(v)) for v in values]


def _parts(out: ConditionOutput) -> dict[Injection, tuple[torch.Tensor, torch.Tensor | None]]:
    """Each output as (tensor, mask); a residual output as its features and weight, flattened
    per sample into one tensor."""
    def part(v: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(v, Tokens):
            return v.values, v.mask
        return (_flat(v), None) if isinstance(v, Residual) else (v, None)

    return {inj: part(v) for inj, v in out.items()}


def _flat(r: Residual) -> torch.Tensor:
    return torch.cat([f.flatten(1).float() for f in r.features.values()] + [r.weight[:, None].float()], 1)


def _check_output(ctx: _Context, cond: Conditioner, out: Any, what: str, batch_size: int) -> None:
    """Keys, per-sample shapes, batch size, dtype, finiteness and masks against the spec."""
    name = ctx.case.name
    if not isinstance(out, dict):
        raise _Broken(f"{what} returned {type(out).__name__}; it must return a dict "
                      f"{{Injection: tensor or Tokens}}.")
    try:
        cond._check_output(name, out, what)
    except LdmError as err:
        raise _Broken(str(err)) from None
    for inj, val in out.items():
        if _takes_tokens(inj) != isinstance(val, Tokens) or (
                (inj is Injection.RESIDUAL) != isinstance(val, Residual)):
            raise _Broken(f"{what} returned {type(val).__name__} for {inj.value}; token outputs "
                          f"(crossattn, gated_attention, decoupled_crossattn) are Tokens(values, "
                          f"mask), residual outputs Residual(features, weight, network), concat "
                          f"and vector outputs tensors.")
        tensor, mask = _parts({inj: val})[inj]
        if tensor.shape[0] != batch_size:
            raise _Broken(f"{what} returned {inj.value} for {tensor.shape[0]} samples; the batch "
                          f"has {batch_size}.")
        if not tensor.is_floating_point():
            raise _Broken(f"{what} returned {inj.value} of dtype {tensor.dtype}; outputs must be "
                          f"floating point.")
        if not torch.isfinite(tensor).all():
            raise _Broken(f"{what} returned non-finite values for {inj.value}.")
        if mask is not None and not mask.any(dim=1).all():
            raise _Broken(f"{what} returned a key-padding mask with a sample attending no token; "
                          f"attention over nothing is NaN - keep at least one token True.")


def _takes_tokens(inj: Injection) -> bool:
    return inj is Injection.CROSSATTN or inj.inserts_layers


def _routed(cond: Conditioning, name: str) -> dict[str, torch.Tensor | None]:
    """Every tensor a routed Conditioning hands the UNet, by name (plugin ``name``'s residuals)."""
    parts = {p: getattr(cond, p) for p in ("context", "context_mask", "concat", "vector")}
    parts["residuals"] = None if cond.residuals is None else _flat(cond.residuals.parts[name])
    inserted = cond.inserted
    for kind in ("gated", "decoupled"):
        for i, t in enumerate(getattr(inserted, kind) if inserted is not None else ()):
            parts.update({f"{kind}[{i}].tokens": t.tokens, f"{kind}[{i}].mask": t.mask,
                          f"{kind}[{i}].region": getattr(t, "region", None)})
    return parts


def _same(a: ConditionOutput, b: ConditionOutput, atol: float = 0.0) -> bool:
    pa, pb = _parts(a), _parts(b)
    if set(pa) != set(pb):
        return False
    for inj in pa:
        (ta, ma), (tb, mb) = pa[inj], pb[inj]
        if ta.shape != tb.shape or not torch.allclose(ta.float(), tb.float(), atol=atol, rtol=0):
            return False
        if (ma is None) != (mb is None) or (ma is not None and not torch.equal(ma, mb)):
            return False
    return True


def _row(out: ConditionOutput, i: int) -> ConditionOutput:
    return {inj: Tokens(v.values[i:i + 1], v.mask[i:i + 1]) if isinstance(v, Tokens) else
            Residual({k: f[i:i + 1] for k, f in v.features.items()}, v.weight[i:i + 1], v.network)
            if isinstance(v, Residual) else v[i:i + 1] for inj, v in out.items()}


def _slice(batch: dict[str, Any], i: int) -> dict[str, Any]:
    return {k: v[i:i + 1] for k, v in batch.items()}


def _batch_size(batch: dict[str, Any]) -> int:
    return len(next(iter(batch.values())))


# -- the rules -----------------------------------------------------------------------------------

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def rule_declaration(ctx: _Context) -> None:
    cls = ctx.case.encoder
    if not (isinstance(cls, type) and issubclass(cls, ConditionEncoder)):
        raise _Broken(f"{cls!r} is not a ConditionEncoder subclass.")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise _Broken(f"`name` is {name!r}; it must be a lower-case identifier such as 'edges' "
                      f"(users write it as conditions.<name> and cond.<name>=...).")
    injections = getattr(cls, "injections", None)
    if not injections or not all(isinstance(i, Injection) for i in injections):
        raise _Broken(f"`injections` is {injections!r}; declare a non-empty tuple of Injection "
                      f"members (routing is declared, never guessed).")
    if not (isinstance(cls.Config, type) and issubclass(cls.Config, EncoderConfig)):
        raise _Broken("`Config` must subclass ldmcore.conditioning.EncoderConfig (it carries "
                      "drop_prob and forbids unknown keys).")
    if cls.Config.model_config.get("extra") != "forbid":
        raise _Broken("`Config` accepts unknown keys; keep EncoderConfig's extra='forbid'.")
    if not isinstance(cls.trainable, bool):
        raise _Broken(f"`trainable` is {cls.trainable!r}; it must be True or False.")
    ctx.config()
    try:
        cls.Config(**{**ctx.case.config, "no_such_key_": 1})
    except ValidationError:
        pass
    else:
        raise _Broken("its Config accepted the unknown key 'no_such_key_'.")


def rule_output_spec(ctx: _Context) -> None:
    enc = ctx.encoder()
    specs = ctx.run("output_specs()", enc.output_specs)
    if not isinstance(specs, dict):
        raise _Broken(f"output_specs() returned {type(specs).__name__}, not a dict.")
    ctx.conditioner(enc)  # injections declared, shapes fit the backbone; names the plugin


def rule_forward(ctx: _Context) -> None:
    enc = ctx.encoder()
    cond = ctx.conditioner(enc)
    value = ctx.value(enc)
    out = ctx.run("forward()", lambda: enc(value))
    _check_output(ctx, cond, out, "forward()", _batch_size(ctx.batch()))


def rule_key_padding_mask(ctx: _Context) -> None:
    enc = ctx.encoder()
    cond = ctx.conditioner(enc)
    # softmax over no key is NaN; a gated layer always attends the visual tokens too
    attended = [i for i in (Injection.CROSSATTN, Injection.DECOUPLED_CROSSATTN)
                if i in cond.specs[ctx.case.name]]
    if not attended:
        return
    b = _batch_size(ctx.batch())
    for what, out in (("forward()", ctx.run("forward()", lambda: enc(ctx.value(enc)))),
                      ("null()", ctx.run("null()", lambda: enc.null(b)))):
        tokens = out.get(attended[0])
        if not isinstance(tokens, Tokens):
            raise _Broken(f"{what} returned no Tokens for {attended[0].value}.")
        if tokens.mask.dtype != torch.bool or tokens.mask.shape != tokens.values.shape[:2]:
            raise _Broken(f"{what} returned a mask of {tokens.mask.dtype} {tuple(tokens.mask.shape)}"
                          f"; it must be bool (batch, tokens) = {tuple(tokens.values.shape[:2])}.")
        if not tokens.mask.any(dim=1).all():
            raise _Broken(f"{what} returned a sample whose mask attends no token.")


def rule_null(ctx: _Context) -> None:
    enc = ctx.encoder()
    cond = ctx.conditioner(enc)
    enc.eval()
    if type(enc).null is ConditionEncoder.null:
        raise _Broken("null() is missing: every condition needs an unconditional value for "
                      "classifier-free guidance (a learned null token, or zeros).")
    b = 3
    out = ctx.run("null()", lambda: enc.null(b))
    _check_output(ctx, cond, out, "null()", b)
    one = ctx.run("null()", lambda: enc.null(1))
    if not all(_same(_row(out, i), one, atol=1e-5) for i in range(b)):  # batched rounding
        raise _Broken("null(3) is not null(1) repeated: the unconditional value must be the "
                      "same for every sample.")
    if not _same(out, enc.null(b)):
        raise _Broken("two calls of null() differ; it must be deterministic.")


def rule_dropout(ctx: _Context) -> None:
    enc = ctx.encoder()
    enc.eval()
    batch = ctx.batch()
    b = _batch_size(batch)
    name = ctx.case.name
    value = ctx.value(enc)
    conditional = ctx.run("forward()", lambda: enc(value))
    null = ctx.run("null()", lambda: enc.null(b))
    for p, expected, word in ((1.0, null, "its null"), (0.0, conditional, "its forward()")):
        other = ctx.encoder(drop_prob=p)
        other.load_state_dict(enc.state_dict())
        other.eval()
        cond = ctx.conditioner(other)
        got = ctx.run("dropout", lambda: cond({**batch, name: value}, b, drop=True,
                                              generator=torch.Generator().manual_seed(0)))
        want = cond.route({name: expected})
        routed_got, routed_want = _routed(got, name), _routed(want, name)
        for part in routed_want:
            x, y = routed_got.get(part), routed_want[part]
            if (x is None) != (y is None) or (x is not None and not torch.equal(x, y)):
                raise _Broken(f"with drop_prob={p} training-time dropout did not give exactly "
                              f"{word} ({part} differs).")


def rule_determinism(ctx: _Context) -> None:
    enc = ctx.encoder()
    enc.eval()
    value = ctx.value(enc)  # drawn once: a batch value may be random (e.g. train-time holes)
    with torch.no_grad():
        a = ctx.run("forward()", lambda: enc(value))
        if not _same(a, enc(value)):
            raise _Broken("two forward() calls on the same value differ in eval mode.")
        # each sample alone vs in a batch, through parse + collate (the contract's own slicing)
        parsed = [ctx.run(f"parse({t!r})", lambda t=t: enc.parse(t)) for t in ctx.cli_values()]
        if len(parsed) < 2:
            return
        together = ctx.run("forward()", lambda: enc(enc.collate(parsed)))
        for i, one in enumerate(parsed):
            alone = enc(enc.collate([one]))
            if not _same(_row(together, i), alone, atol=1e-4):
                raise _Broken(f"cli value {i} encodes differently alone than in a batch; an "
                              f"encoder must treat samples independently (no batch statistics).")


def rule_base(ctx: _Context) -> None:
    """A plugin that provides a base gives a deterministic, finite estimate of the clean latents."""
    enc = ctx.encoder()
    if not enc.provides_base:
        return
    enc.eval()
    value = ctx.value(enc)  # drawn once, as the model does for the encoders and the base
    bb = enc.backbone
    want = (_batch_size(ctx.batch()), bb.latent_channels, *bb.latent_size)
    base = ctx.run("base()", lambda: enc.base(value))
    if not isinstance(base, torch.Tensor) or tuple(base.shape) != want or not torch.isfinite(base).all():
        got = tuple(base.shape) if isinstance(base, torch.Tensor) else type(base).__name__
        raise _Broken(f"base() returned {got}; it must be a finite tensor (batch, latent_channels, "
                      f"*latent_size) = {want}, an estimate of the clean latents.")
    if not torch.equal(base, enc.base(value)):
        raise _Broken("two base() calls on the same value differ; the model adds back the base it "
                      "subtracted, so it must be deterministic.")


def rule_save_load(ctx: _Context) -> None:
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
            raise _Broken(str(err)) from None
    fresh.eval()
    value = ctx.value(enc)
    with torch.no_grad():
        if not _same(enc(value), fresh(value)) or not _same(enc.null(2), fresh.null(2)):
            raise _Broken("outputs differ after a safetensors save/load round trip: state that "
                          "shapes the outputs is missing from state_dict() (make learned nulls "
                          "nn.Parameters and fixed tables persistent buffers).")


def rule_parse(ctx: _Context) -> None:
    texts = ctx.cli_values()
    if not texts:
        raise _Broken("the PluginCase gives no cli_values: the kit cannot check how users write "
                      "this condition on the command line (cond.<name>=...).")
    enc = ctx.encoder()
    enc.eval()
    cond = ctx.conditioner(enc)
    parsed = [ctx.run(f"parse({t!r})", lambda t=t: enc.parse(t)) for t in texts]
    value = ctx.run("collate() of parsed values", lambda: enc.collate(parsed))
    with torch.no_grad():
        out = ctx.run("forward() of parsed values", lambda: enc(value))
    _check_output(ctx, cond, out, "forward() of parsed values", len(texts))
    for bad in ctx.cli_values(bad=True):
        try:
            enc.parse(bad)
        except LdmError:
            continue
        except Exception as exc:
            raise _Broken(f"parse({bad!r}) raised {type(exc).__name__}: {exc}; a value a user "
                          f"can mistype must raise an LdmError (one paragraph, exit status 2).") from None
        raise _Broken(f"parse({bad!r}) accepted a value the case lists as invalid.")


def rule_widget(ctx: _Context) -> None:
    enc = ctx.encoder()
    widget = ctx.run("widget()", enc.widget)
    if widget is None:
        return  # the page shows a text field, read as the command line reads cond.<name>=
    if not isinstance(widget, Widget) or not isinstance(widget.kind, WidgetKind):
        raise _Broken(f"widget() returned {widget!r}; return a ldmcore.conditioning.Widget with a "
                      f"WidgetKind, or None for a text field.")
    kind = widget.kind
    if kind in (WidgetKind.CHOICE, WidgetKind.BOXES, WidgetKind.LABEL_MAP) and not widget.choices:
        raise _Broken(f"a {kind.value} widget needs its choices (the names a person picks from).")
    needs_size = kind in (WidgetKind.LABEL_MAP, WidgetKind.IMAGE_MASK)
    size = widget.size
    if (needs_size and size is None) or (size is not None and (
            len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size))):
        raise _Broken(f"widget size={size!r}: give (height, width) in pixels"
                      f"{' (a painted input needs one)' if needs_size else ''}.")
    slots = {"{image}", "{mask}"} if kind is WidgetKind.IMAGE_MASK else {"{image}"}
    if kind in FILE_KINDS and not all(slot in widget.value for slot in slots):
        raise _Broken(f"widget value={widget.value!r} must hold {' and '.join(sorted(slots))}: the "
                      f"paths of the files the page sends.")
    texts = []  # what the page can send: every choice, a box of each class, the default text
    if kind is WidgetKind.CHOICE:
        texts = list(widget.choices)
    elif kind is WidgetKind.BOXES:
        texts = [json.dumps([[0.1, 0.2, 0.6, 0.7, name]]) for name in widget.choices]
    elif kind is WidgetKind.TEXT and widget.default:
        texts = [widget.default]
    if kind is WidgetKind.CHOICE and widget.default and widget.default not in widget.choices:
        raise _Broken(f"widget default={widget.default!r} is not one of its choices.")
    for text in texts:
        try:
            enc.parse(read_value(text))
        except Exception as exc:  # noqa: BLE001 - any failure is the rule's finding
            raise _Broken(f"the page can send cond.{ctx.case.name}={text!r} (the widget offers it), "
                          f"but parse refuses it: {type(exc).__name__}: {exc}") from None


def rule_gradients(ctx: _Context) -> None:
    enc = ctx.encoder()
    enc.train()
    cond = ctx.conditioner(enc)
    b = _batch_size(ctx.batch())
    out = ctx.run("forward()", lambda: cond.encode(ctx.case.name, ctx.value(enc)))
    null = ctx.run("null()", lambda: enc.null(b))
    tensors = [t for o in (out, null) for t, _ in _parts(o).values()]
    params = dict(enc.named_parameters())
    if enc.trainable:
        if not any(p.requires_grad for p in params.values()):
            raise _Broken("it declares trainable = True but has no trainable parameters; "
                          "declare trainable = False.")
        # a fixed random linear read-out: its gradient is not zero where an output is (a
        # zero-initialised last layer), as a squared norm's would be
        g = torch.Generator().manual_seed(0)
        loss = sum((t.float() * torch.randn(t.shape, generator=g)).mean() for t in tensors
                   if t.requires_grad)
        if not isinstance(loss, torch.Tensor):
            raise _Broken("it declares trainable = True but no output depends on a parameter.")
        loss.backward()
        grads = {k: p.grad for k, p in params.items() if p.grad is not None}
        if not any(g.abs().sum() > 0 for g in grads.values()):
            raise _Broken("it declares trainable = True but no parameter receives a gradient.")
        bad = [k for k, g in grads.items() if not torch.isfinite(g).all()]
        if bad:
            raise _Broken(f"non-finite gradients at {bad[:3]}.")
    else:
        for what, o in (("forward()", out), ("null()", null)):
            if any(t.requires_grad for t, _ in _parts(o).values()):
                raise _Broken(f"it is frozen (trainable = False) but its {what} output requires "
                              f"grad, so the diffusion loss would backpropagate into it.")
        leaking = [k for k, p in params.items() if p.requires_grad]
        if leaking:
            raise _Broken(f"it is frozen but parameters {leaking[:3]} still require grad.")


def rule_train_sample(ctx: _Context) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # smoke-size models: extra threads only add OpenMP overhead
    try:
        _train_sample(ctx)
    finally:
        torch.set_num_threads(threads)


def _train_sample(ctx: _Context) -> None:
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
        reg = isolated_registry(_EncoderPlugin([case.encoder, *extra.values()]))
        cfg = kit_config(case, {name: case.config, **{k: {} for k in extra}})
        torch.manual_seed(0)
        model = ctx.run(f"building a model with it {label}", lambda: build_model(cfg, registry=reg))
        params = denoiser_params(model)
        enc = model.conditioner.encoders[name]
        mine = {k: p for k, p in enc.named_parameters()}
        if enc.trainable and any(p.requires_grad for p in mine.values()):
            if not any(p is q for p in mine.values() for q in params.values()):
                raise _Broken(f"{label}: its parameters are not among the trained parameters.")
        frozen = {k: p.detach().clone() for k, p in mine.items()} if not enc.trainable else {}
        opt = torch.optim.AdamW(params.values(), lr=1e-3)
        model.train()
        for step in range(3):  # zero-initialised output convs: step 3 is the first to reach it
            opt.zero_grad(set_to_none=True)
            loss = ctx.run(f"the diffusion loss {label}", lambda s=step: model.loss(
                batch, generator=torch.Generator().manual_seed(s)))
            if not torch.isfinite(loss):
                raise _Broken(f"{label}: the diffusion loss is {loss.item()}.")
            loss.backward()
            opt.step()
        if enc.trainable and mine and label == "alone":
            if not any(p.grad is not None and p.grad.abs().sum() > 0 for p in mine.values()):
                raise _Broken("the diffusion loss sends no gradient into it (trainable = True).")
        for k, before in frozen.items():
            if not torch.equal(before, mine[k].detach()):
                raise _Broken(f"{label}: parameter {k} of a frozen encoder changed in training.")
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
            raise _Broken(f"sampling {label} gave images of shape {tuple(images.shape)} "
                          f"(expected {want}) or non-finite values.")


def rule_registration(ctx: _Context) -> None:
    """The hook module registers the encoder, and every config file it ships composes."""
    plugin = ctx.case.plugin
    if plugin is None:
        return
    try:
        reg = isolated_registry(plugin, builtins=True)
    except LdmError as err:
        raise _Broken(f"registering the plugin module failed: {err}") from None
    if reg.encoders.get(ctx.case.name) is not ctx.case.encoder:
        raise _Broken(f"the plugin module does not register {ctx.case.encoder.__qualname__} "
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
                raise _Broken(f"its config {group}/{path.name} does not compose and validate: "
                              f"{err}") from None
            if group == "condition" and option not in cfg.conditions:
                raise _Broken(f"its config condition/{path.name} does not land in "
                              f"conditions.{option}; start it with '# @package "
                              f"conditions.{option}'.")


# -- rules of plugins that insert layers into the transformer blocks -----------------------------
# (gated_attention, decoupled_crossattn: docs/conformance.md). Each builds the kit model with the
# plugin alone, its backbone's zero-initialised tensors drawn at random as a trained backbone has
# them (so every path reaches the output), and compares the UNet with and without the plugin's
# layers (``Conditioning.inserted``). A plugin that inserts no layers passes them trivially.

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


def _inserting(ctx: _Context, trained: bool = False) -> _Inserting | None:
    """The kit model with the plugin alone (None when it inserts no layers); ``trained``: after
    one AdamW step of the diffusion loss on the plugin's parameters alone."""
    case, name = ctx.case, ctx.case.name
    enc = ctx.encoder()
    if not any(i.inserts_layers for i in ctx.run("output_specs()", enc.output_specs)):
        return None
    reg = isolated_registry(_EncoderPlugin([case.encoder]))
    cfg = kit_config(case, {name: {**case.config, "drop_prob": 0.0}})
    torch.manual_seed(0)
    model = ctx.run("building a model with it", lambda: build_model(cfg, registry=reg))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.unet.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    batch = ctx.batch()
    b = _batch_size(batch)
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
            raise _Broken("the diffusion loss sends no gradient into its inserted layers: a layer "
                          "that starts at zero effect needs a trainable gate or zero-initialised "
                          "projection the loss can open (a constant zero is no gate).")
        opt.step()
    model.eval()
    return kit


def rule_zero_effect(ctx: _Context) -> None:
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
            raise _Broken(f"freshly built, its layers change the backbone's output (by up to "
                          f"{float((with_layers - without).abs().max()):.3g}, tokens of {what}); they "
                          f"must start at zero effect (a gate tanh(0), a zero value projection) so "
                          f"attaching it to a pretrained model changes nothing at step 0.")


def rule_gate(ctx: _Context) -> None:
    kit = _inserting(ctx, trained=True)
    if kit is None:
        return
    with_layers, without = kit.outputs()
    if torch.equal(with_layers, without):
        raise _Broken("after a training step its layers still have no effect on the output: the "
                      "gate never opens (zero effect at init must come from a trainable gate or "
                      "zero-initialised projection, not from layers that are not wired in).")


def rule_owned_layers(ctx: _Context) -> None:
    kit = _inserting(ctx)  # building it runs the Conditioner's ownership checks, naming the plugin
    if kit is None:
        return
    unet = kit.model.unet
    with torch.device("meta"):
        alone = set(type(unet)(unet.shape).state_dict())
    if set(unet.state_dict()) != alone:
        extra = sorted(set(unet.state_dict()) - alone)
        raise _Broken(f"the backbone gained tensors {extra[:3]} with the plugin; its layers must "
                      f"be the encoder's own submodules, never the UNet's.")


def rule_removal(ctx: _Context) -> None:
    kit = _inserting(ctx)
    if kit is None:
        return
    _, before = kit.outputs()
    backbone = kit.backbone()
    trained = _inserting(ctx, trained=True)
    after = trained.backbone()
    moved = [k for k, v in backbone.items() if not torch.equal(v, after[k])]
    if moved:
        raise _Broken(f"training the plugin alone changed backbone tensors {moved[:3]}; removing "
                      f"it would not restore the backbone.")
    _, without = trained.outputs()
    if not torch.equal(before, without):
        raise _Broken("after training the plugin, the output without its layers differs from the "
                      "backbone's own: removing it does not restore the backbone exactly.")


def rule_layers_save_load(ctx: _Context) -> None:
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
        raise _Broken(str(err)) from None
    kit.model.conditioner.encoders[name] = fresh.eval()
    got, _ = kit.outputs()
    if not torch.equal(got, want):
        raise _Broken("after a safetensors round trip of its state_dict the model's output "
                      "differs: its inserted layers' trained state (gates, projections) is not all "
                      "in the encoder's state_dict (register the layers as submodules and keep "
                      "fixed tensors as persistent buffers).")
# -- rules of the residual injection: a plugin for a pretrained backbone -------------------------

def _residual_model(ctx: _Context) -> Any:
    """The kit's tiny model with the plugin alone, its UNet random (as a trained one, zero
    layers included), so that an effect on the backbone's output shows; None for a plugin
    without a residual output."""
    enc = ctx.encoder()
    if Injection.RESIDUAL not in ctx.run("output_specs()", enc.output_specs):
        return None
    reg = isolated_registry(_EncoderPlugin([ctx.case.encoder]))
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


def _residual_call(ctx: _Context, model: Any) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """(conditioning of the kit's batch, z_t, t) for one network call."""
    batch = ctx.batch()
    b = _batch_size(batch)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(b, *model.latent_shape(), generator=g)
    t = torch.randint(0, model.schedule.num_timesteps, (b,), generator=g)
    values = model.conditioner.resolve(batch)
    return ctx.run("the conditioner", lambda: model.conditioner(values, b)), z, t


def _without_residuals(cond: Any) -> Any:
    return replace(cond, residuals=None)


@torch.no_grad()
def rule_residual_zero_init(ctx: _Context) -> None:
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
        raise _Broken(f"its residual maps are not zero at initialisation (largest |value| "
                      f"{largest:.3g}), so attaching it changes the pretrained model's output; "
                      f"zero-initialise the last layer of every output (a 1x1 convolution, or a "
                      f"gain) so that it starts at no effect.")


def _backbone_state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.unet.state_dict().items()}


def rule_residual_ownership(ctx: _Context) -> None:
    """What the plugin adds is its own: no backbone tensor is shared with it or added for it."""
    model = _residual_model(ctx)
    if model is None:
        return
    enc = model.conditioner.encoders[ctx.case.name]
    backbone = {p.data_ptr() for p in model.unet.parameters()}
    shared = [k for k, p in enc.named_parameters() if p.data_ptr() in backbone]
    if shared:
        raise _Broken(f"its parameters {shared[:3]} are the backbone's own tensors, so training "
                      f"it trains the backbone; copy them (copy.deepcopy, or load_state_dict into "
                      f"a module of its own) in init_from_backbone.")
    bare = build_model(kit_config(ctx.case, {}), registry=isolated_registry())
    want = {k: tuple(v.shape) for k, v in bare.unet.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in model.unet.state_dict().items()}
    if got != want:
        extra = sorted(set(got) ^ set(want)) or [k for k in got if got[k] != want[k]]
        raise _Broken(f"enabling it changes the backbone's tensors ({extra[:3]}); a residual "
                      f"plugin keeps what it adds in its own modules, saved with it.")


def rule_residual_removal(ctx: _Context) -> None:
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
        raise _Broken(f"attaching and training it alone changed the backbone's {moved[:3]}; a "
                      f"residual plugin never writes into the backbone, so that removing it "
                      f"gives back the pretrained model.")
    bare = build_model(kit_config(ctx.case, {}), registry=isolated_registry()).eval()
    bare.unet.load_state_dict(before)
    cond, z, t = _residual_call(ctx, model)
    with torch.no_grad():
        null = model.conditioner.unconditional(z.shape[0])
        if not torch.equal(model.network(z, t, null), bare.network(z, t, bare.conditioner({}, z.shape[0]))):
            raise _Broken("its null does not give the backbone alone: the unconditional branch of "
                          "guidance must be the model without the plugin (weight 0).")


def rule_residual_save_load(ctx: _Context) -> None:
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
                        registry=isolated_registry(_EncoderPlugin([ctx.case.encoder]))).eval()
    fresh.unet.load_state_dict(model.unet.state_dict())
    try:
        load_plugin_weights(fresh, name, path)
    except LdmError as err:
        raise _Broken(f"its saved weights do not load into a fresh model: {err}") from None
    cond, z, t = _residual_call(ctx, model)
    cond2, _, _ = _residual_call(ctx, fresh)
    with torch.no_grad():
        a, b = model.network(z, t, cond), fresh.network(z, t, cond2)
    if not torch.equal(a, b):
        raise _Broken(f"a fresh model with its saved weights differs by {float((a - b).abs().max()):.3g}: "
                      f"state that shapes its maps is missing from state_dict() (register copies "
                      f"and gains as modules and parameters).")


RULES: dict[str, Callable[[_Context], None]] = {
    "declaration": rule_declaration,
    "output-spec": rule_output_spec,
    "forward": rule_forward,
    "key-padding-mask": rule_key_padding_mask,
    "null": rule_null,
    "dropout": rule_dropout,
    "determinism": rule_determinism,
    "base": rule_base,
    "save-load": rule_save_load,
    "parse": rule_parse,
    "widget": rule_widget,
    "gradients": rule_gradients,
    "train-sample": rule_train_sample,
    "registration": rule_registration,
    "zero-effect": rule_zero_effect,
    "gate": rule_gate,
    "owned-layers": rule_owned_layers,
    "removal": rule_removal,
    "layers-save-load": rule_layers_save_load,
    "residual-zero-init": rule_residual_zero_init,
    "residual-ownership": rule_residual_ownership,
    "residual-removal": rule_residual_removal,
    "residual-save-load": rule_residual_save_load,
}


def _run(case: PluginCase, rules: Sequence[str]) -> Iterator[tuple[str, str]]:
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise ValueError(f"unknown conformance rules {unknown}; the rules are {list(RULES)}")
    with tempfile.TemporaryDirectory(prefix="ldm-conformance-") as tmp:
        for rule in rules:
            rng = torch.get_rng_state()
            try:
                RULES[rule](_Context(case, Path(tmp)))
            except _Broken as why:
                yield rule, str(why)
            except NotImplementedError as exc:
                where = traceback.extract_tb(exc.__traceback__)[-1].name
                yield rule, f"{where}() is not implemented."
            except Exception as exc:  # a plugin's bug inside a rule is that rule's failure
                where = traceback.extract_tb(exc.__traceback__)[-1]
                yield rule, (f"{type(exc).__name__}: {exc} (in {where.name}, "
                             f"{Path(where.filename).name}:{where.lineno})")
            finally:
                torch.set_rng_state(rng)


def check_rule(case: PluginCase, rule: str) -> None:
    """Check one rule; raises ``ConformanceError`` naming it when the plugin breaks it."""
    failures = dict(_run(case, [rule]))
    if failures:
        raise ConformanceError(case.name, failures)


def check_plugin(case: PluginCase, rules: Sequence[str] | None = None) -> None:
    """Check every rule (or those named); raises one ``ConformanceError`` listing each failure."""
    failures = dict(_run(case, list(rules or RULES)))
    if failures:
        raise ConformanceError(case.name, failures)


class ConformanceTests:
    """Mixin: subclass it in a plugin's tests as ``class TestMine(ConformanceTests)`` and set
    ``case``; pytest then runs one test per rule (``test_rule_<name>``)."""

    case: ClassVar[PluginCase]


def _make_test(rule: str) -> Callable[[ConformanceTests], None]:
    def test(self: ConformanceTests) -> None:
        check_rule(self.case, rule)

    test.__name__ = test.__qualname__ = f"test_rule_{rule.replace('-', '_')}"
    test.__doc__ = f"Conformance rule {rule!r} (docs/conformance.md)."
    return test


for _rule in RULES:
    setattr(ConformanceTests, f"test_rule_{_rule.replace('-', '_')}", _make_test(_rule))
del _rule
