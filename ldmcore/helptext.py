"""``ldm COMMAND --help``: each command's keys with their types, defaults and descriptions, read
from the pydantic models that validate them and from the registered plugins, so the help
cannot drift from what the command accepts.

``ldm train --help`` shows the values as the rest of its command line composes them
(``ldm train experiment=demo --help`` shows the demo's), the config groups with their options,
and every installed plugin's keys; the other commands show their options' own defaults.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ldmcore.errors import override_text

USAGE = {
    "train": "ldm train [experiment=NAME] [GROUP=OPTION ...] [KEY=VALUE ...]   (Hydra overrides)",
    "sample": "ldm sample run=RUN_DIR cond.NAME=VALUE [KEY=VALUE ...]",
    "eval": "ldm eval run=RUN_DIR [KEY=VALUE ...]",
    "import": "ldm import SOURCE OUT_DIR [KEY=VALUE ...]   (an SD .safetensors file or a diffusers folder; with attach_to=RUN a ControlNet, T2I-Adapter or IP-Adapter)",
    "export": "ldm export RUN_DIR OUT [KEY=VALUE ...]",
    "new-plugin": "ldm new-plugin NAME [KEY=VALUE ...]   (NAME: a lower-case identifier)",
    "plugins": "ldm plugins [--json]   (every registered plugin: injections, package, version, hooks)",
    "doctor": "ldm doctor [--json]   (this machine, versions, what precision and threads auto picks)",
    "serve": "ldm serve run=RUN_DIR [KEY=VALUE ...]   (a local web page over the run)",
}


def type_text(annotation: Any) -> str:
    """A field's type as a user writes values of it: ``int``, ``auto|int``, ``[int,...]``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin in (typing.Union, types.UnionType):
        return "|".join(dict.fromkeys(type_text(a) for a in args))
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"[{type_text(args[0])},...]"
        return "[" + ",".join(type_text(a) for a in args) + "]"
    if origin is dict:
        return "{key:value}"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "|".join(str(m.value) for m in annotation)
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def fields(model: type[BaseModel], values: dict[str, Any] | None = None, prefix: str = "",
           spelled: dict[str, str] | None = None) -> Iterator[tuple[str, str, str, str]]:
    """(key, type, value, description) of every leaf of ``model``: the value from ``values``
    when given (a composed config), else the field's default. ``spelled``: field -> how the
    command line writes it (``plugin_guidance`` -> ``guidance.NAME``)."""
    for name, field in model.model_fields.items():
        key = (spelled or {}).get(name, prefix + name)
        if name in (spelled or {}) and typing.get_origin(field.annotation) is dict:  # KEY.NAME=VALUE
            yield key, type_text(typing.get_args(field.annotation)[1]), "", field.description or ""
            continue
        if _is_model(field.annotation):
            yield from fields(field.annotation, (values or {}).get(name), f"{key}.")
            continue
        if values is not None and name in values:
            value = values[name]
        elif field.is_required():
            value = "(required)"
        else:
            value = field.get_default(call_default_factory=True)
        shown = value if isinstance(value, str) and value == "(required)" else override_text(_plain(value))
        yield key, type_text(field.annotation), shown, field.description or ""


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def table(rows: list[tuple[str, str, str, str]]) -> str:
    """Rows as aligned columns: key, type, value, then the description."""
    if not rows:
        return "  (none)"
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3]
                     for r in rows).rstrip()


def plugin_rows(registry: Any) -> list[tuple[str, str, str, str]]:
    """Every installed plugin's config keys (``conditions.NAME.KEY``) with their defaults."""
    return [row for name, cls in sorted(registry.encoders.items())
            for row in fields(cls.Config, prefix=f"conditions.{name}.")]


def train_help(args: list[str]) -> str:
    from ldmcore.config import ExperimentConfig, group_options, load
    from ldmcore.registry import default_registry

    cfg = load(args).model_dump(mode="json")
    groups = ["experiment", "model", "autoencoder", "data", "sampler", "trainer", "condition"]
    chosen = " ".join(args) or "no overrides"
    rows = [r for r in fields(ExperimentConfig, cfg) if not r[0].startswith("conditions")]
    return "\n".join([
        "config groups (GROUP=OPTION; condition=[a,b] enables several plugins):",
        *(f"  {g:12s}{', '.join(group_options(g))}" for g in groups),
        "", f"keys (KEY=VALUE), with their values as composed from: {chosen}", table(rows),
        "", "plugin keys (enable with condition=[NAME], then conditions.NAME.KEY=VALUE):",
        table(plugin_rows(default_registry())),
        "", "reference with every trainer.* key: docs/trainer.md"])


def sample_help() -> str:
    from ldmcore.registry import default_registry
    from ldmcore.sample import PREFIXED, SampleRequest

    spelled = {field: f"{prefix}NAME" for prefix, field in PREFIXED.items()}
    registry = default_registry()
    return "\n".join([
        "keys (KEY=VALUE); sampler keys left out come from the run's sampler config, or from",
        "sampler/NAME.yaml when sampler=NAME names another sampler:",
        table(list(fields(SampleRequest, spelled=spelled))),
        "", f"conditions (cond.NAME=VALUE): {', '.join(sorted(registry.encoders))}; "
            f"samplers (sampler=NAME): {', '.join(sorted(registry.samplers))}"])


def options_help(model: type[BaseModel]) -> str:
    return "keys (KEY=VALUE):\n" + table(list(fields(model)))


def command_help(command: str, args: list[str]) -> str:
    """The help text of ``command``; ``args``: the rest of its command line (train composes it)."""
    if command == "train":
        body = train_help(args)
    elif command == "sample":
        body = sample_help()
    elif command == "eval":
        from ldmcore.eval.request import EvalRequest

        body = options_help(EvalRequest)
    elif command == "import":
        from ldmcore.interop.options import ImportOptions

        body = options_help(ImportOptions)
    elif command == "export":
        from ldmcore.interop.options import ExportOptions

        body = options_help(ExportOptions)
    elif command == "serve":
        from ldmcore.serve.options import ServeOptions

        body = options_help(ServeOptions)
    elif command == "new-plugin":
        from ldmcore.scaffold import NewPluginOptions

        body = options_help(NewPluginOptions)
    else:
        body = "options: --json  print the same as JSON"
    return f"usage: {USAGE[command]}\n\n{body}\n"
