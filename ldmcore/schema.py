"""The pydantic base every ldmcore schema uses, and the one-paragraph form of its errors.

Unknown keys are errors (``extra="forbid"``), so are NaN and infinite numbers, and validated
configs are frozen; a
``ValidationError`` becomes one paragraph that names each bad key path, what is wrong with it
and, for an unknown key, the nearest valid keys written as overrides that work when pasted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ldmcore.errors import nearest, override_text


class Strict(BaseModel):
    """Unknown keys are errors, and so are NaN and infinite numbers (no setting means them)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def format_validation_error(err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None,
                            write_value: Callable[[Any], str] = override_text) -> str:
    """One paragraph naming each bad key path, what is wrong, and the valid names.
    ``write_value`` writes a value as the command takes it (Hydra's grammar by default)."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        path = f"{prefix}{loc}"
        if e["type"] == "extra_forbidden":
            valid = _fields_at(model, e["loc"][:-1]) if model else []
            parent = path[: len(path) - len(str(e["loc"][-1]))]
            given = e["input"]
            write = None if isinstance(given, dict) else (  # a dict: keys below the unknown one
                lambda key, parent=parent, given=given: f"{parent}{key}={write_value(given)}")
            hint = nearest(str(e["loc"][-1]), valid, write=write)
            listed = f" Valid keys here: {', '.join(valid)}" if valid and hint.startswith("did you") else ""
            parts.append(f"unknown config key '{path}': {hint}{listed}")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            msg = e["msg"].removeprefix("Value error, ")
            parts.append(f"config key '{path}': {msg}{shown}" if path else msg)
    text = "; ".join(p.rstrip(".") for p in parts)
    return text if text.endswith("?") else text + "."


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part)) if isinstance(model, type) else None
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)

