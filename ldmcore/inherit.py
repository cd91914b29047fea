"""``model.init_from=RUN``: the new config takes the base run's backbone settings.

A pretrained backbone keeps its shape, so its ``model`` and ``autoencoder`` sections come from
the base run (read from its checkpoint's metadata, the run's one source of its config), over
whatever the experiment and the config groups say. The command line may still set a key:

* a key that does not change a tensor's shape (``model.diffusion.*``, ``model.unet.dropout``,
  ``autoencoder.train.*``) is taken as given: a fine-tune may change its loss weighting;
* a key that does (``SHAPE_KEYS``) must equal the base's; otherwise the error names the key and
  both values, instead of a tensor the new model lacks.

``data.channels`` is not inherited (it is the data's), but checked the same way: the first
stage's input and output convolutions are made for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ldmcore import checkpoint
from ldmcore.errors import ConfigError, LdmError

INHERITED = ("model.unet", "model.diffusion", "autoencoder")
NOT_INHERITED = ("autoencoder.train", "autoencoder.checkpoint")  # the base's AE comes with its weights
SHAPE_FREE = ("model.diffusion", "model.unet.dropout", *NOT_INHERITED)
CHECKED_ONLY = ("data.channels",)

# where a run keeps the checkpoint whose metadata holds its config (RunFolder.last)
LAST_CHECKPOINT = Path("checkpoints") / "last.safetensors"


def base_config(init_from: Path | str) -> dict[str, Any]:
    """The resolved config of the run at ``init_from`` (plain values, from its metadata)."""
    path = Path(init_from) / LAST_CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"model.init_from={str(init_from)!r} is not a run folder with a checkpoint "
                          f"(no {str(path)!r}); name a run made by `ldm train` or `ldm import`.")
    try:
        config = checkpoint.metadata(path).get("config")
    except LdmError as err:
        raise type(err)(f"model.init_from={str(init_from)!r}: {err}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"model.init_from={str(init_from)!r}: {str(path)!r} holds no run config "
                          f"in its metadata; was it written by `ldm train` or `ldm import`?")
    return config


def leaves(section: Any, prefix: str) -> dict[str, Any]:
    """Every leaf of a nested dict as ``dotted.key -> value``."""
    if not isinstance(section, dict) or not section:
        return {prefix: section}
    out: dict[str, Any] = {}
    for key, value in section.items():
        out.update(leaves(value, f"{prefix}.{key}"))
    return out


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _get(raw: dict[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def inherit_base(raw: dict[str, Any], shown: dict[str, str]) -> dict[str, Any]:
    """``raw`` (a composed config) with the base run's backbone settings, where ``raw`` names
    one in ``model.init_from``. ``shown``: the dotted keys the command line set, each with the
    override that set it (a group choice such as ``model=tiny`` sets every key under it)."""
    init_from = _get(raw, "model.init_from")
    if init_from is None:
        return raw
    base = base_config(init_from)
    out = {**raw, "model": dict(raw.get("model", {})), "autoencoder": dict(raw.get("autoencoder", {}))}
    for section in INHERITED:
        *parent, name = section.split(".")
        if parent:
            out[parent[0]][name] = dict(_get(out, section) or {})
    inherited = {k: v for s in INHERITED for k, v in leaves(_get(base, s), s).items()
                 if not _under(k, NOT_INHERITED)}
    checked = {k: v for s in CHECKED_ONLY for k, v in leaves(_get(base, s), s).items()}
    for key, value in {**inherited, **checked}.items():
        said = shown.get(key) or next((shown[e] for e in shown if key.startswith(e + ".")), None)
        if said is None and key in inherited:
            _set(out, key, value)
            continue
        mine = _get(raw, key)
        if not _under(key, SHAPE_FREE) and _plain(mine) != _plain(value):
            by = f"the command line's {said}" if said else "the experiment's data config"
            raise ConfigError(
                f"model.init_from={str(init_from)!r} was trained with {key}={_plain(value)}, but "
                f"this config sets {key}={_plain(mine)} ({by}). A pretrained backbone keeps its "
                f"shape: leave {key} out (the base's value is taken), or train from scratch "
                f"without model.init_from.")
    return out


def _plain(value: Any) -> Any:
    """Tuples and lists compare (and print) alike."""
    return list(value) if isinstance(value, tuple) else value
