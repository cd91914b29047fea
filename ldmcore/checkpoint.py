"""Checkpoints: safetensors only, written atomically, never a pickle.

A checkpoint is one ``.safetensors`` file of named tensors plus string metadata. Groups of
tensors share a prefix (``unet.``, ``ema.``, ``optim.``...). Non-tensor state (the resolved
config, plugin names and versions, the step, optimizer hyper-parameters) is JSON in metadata.
Writes go to a temporary file in the same folder, are fsynced, then renamed over the target,
so a crash or a kill leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ldmcore.errors import CheckpointError, first_few


def save(path: Path | str, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:
    """Write ``tensors`` and JSON ``meta`` to ``path`` atomically.

    Any failure (a full disk, a quota, an I/O error: safetensors reports some of them as its
    own error type, not ``OSError``) leaves the previous file as it was, removes the temp file
    and becomes a ``CheckpointError`` naming the disk, its free space and the space needed.
    """
    path = Path(path)
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _untie(flat)
    metadata = {k: json.dumps(v) for k, v in (meta or {}).items()}
    needed = sum(v.numel() * v.element_size() for v in flat.values()) + sum(map(len, metadata.values()))
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        save_file(flat, tmp, metadata=metadata or None)  # empty metadata would be unreadable
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"cannot write checkpoint {str(path)!r}: "
                              f"{getattr(exc, 'strerror', None) or exc}. {_space(path, needed)}"
                              f"The previous file, if any, is intact and the partial file was "
                              f"removed; free disk space or choose a writable run_dir, then "
                              f"resume=true.") from None
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(path.parent)


def _space(path: Path, needed: int) -> str:
    """'The disk holding FOLDER has X MB free; this checkpoint needs about Y MB. ' (or '')."""
    folder = next((p for p in (path.parent, *path.parents) if p.exists()), None)
    if folder is None:
        return ""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    capped = (f" and files of this process are capped at {_size(limit)} (ulimit -f)"
              if limit != resource.RLIM_INFINITY and limit < needed else "")
    return (f"The disk holding {str(folder)!r} has {_size(free)} free{capped}; this checkpoint "
            f"needs about {_size(needed)}. ")


def _size(n: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 2**10:.1f} KB"


def _untie(flat: dict[str, torch.Tensor]) -> None:
    """safetensors refuses tensors sharing storage; give each its own copy."""
    seen: set[int] = set()
    for k, v in flat.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        if ptr in seen:
            flat[k] = v.clone()
        elif ptr != -1:
            seen.add(ptr)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint; any unreadable file becomes a ``CheckpointError`` saying why."""
    path = _safetensors_file(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _unreadable(path, exc) from None
    return tensors, metadata(path)


def metadata(path: Path | str) -> dict[str, Any]:
    """A checkpoint's metadata alone (JSON values decoded), without reading its tensors."""
    path = _safetensors_file(path)
    try:
        with safe_open(str(path), "pt") as fh:
            raw_meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _unreadable(path, exc) from None
    meta: dict[str, Any] = {}
    for k, v in raw_meta.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return meta


def keys(path: Path | str) -> list[str]:
    """A checkpoint's tensor names, without reading the tensors."""
    path = _safetensors_file(path)
    try:
        with safe_open(str(path), "pt") as fh:
            return list(fh.keys())
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _unreadable(path, exc) from None


def _safetensors_file(path: Path | str) -> Path:
    """``path``, if it is a file that is not a pickle by its name."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; a run folder keeps its "
                              f"checkpoints in checkpoints/last.safetensors.")
    if path.suffix in (".ckpt", ".pt", ".pth", ".bin"):
        raise CheckpointError(f"{str(path)!r} looks like a pickled PyTorch file; ldmcore loads "
                              f"only .safetensors (pickles can run code). Convert it with "
                              f"safetensors first.")
    return path


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(f"{str(path)!r} is not a readable safetensors file ({exc}); it may "
                           f"be truncated or another format. Use an intact .safetensors file, "
                           f"e.g. the run's checkpoints/last.safetensors.")


def with_prefix(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in state.items()}


def strip_prefix(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


TRAINING_PREFIXES = ("ema.", "optim.", "rng.")  # a training checkpoint's non-model tensors


def load_model_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path | str) -> None:
    """The model's own tensors of a training checkpoint (not its EMA, optimizer or RNG) into ``model``."""
    state = {k: v for k, v in tensors.items() if not k.startswith(TRAINING_PREFIXES)}
    load_into(model, state, "model", path)


def mismatch_problems(missing: list[str], unexpected: list[str], wrong_shape: list[str],
                      shown: int) -> list[str]:
    """The parts of a weights-mismatch message, each "N <kind>: the first few keys" (empty when
    the keys fit): shared by loading into a module and by interop's key maps."""
    kinds = (("missing", missing), ("unexpected", unexpected), ("with the wrong shape", wrong_shape))
    return [f"{len(keys)} {kind}: {first_few(keys, shown)}" for kind, keys in kinds if keys]


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, path: Path | str) -> None:
    """``load_state_dict`` that reports missing/unexpected/mis-shaped keys as a CheckpointError."""
    own = module.state_dict()
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    problems = mismatch_problems(sorted(set(own) - set(state)), sorted(set(state) - set(own)),
                                 [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shape], 4)
    if problems:
        raise CheckpointError(f"{what} weights in {str(path)!r} do not fit the configured model: "
                              f"{'; '.join(problems)}. Was it written with a different config?")
    module.load_state_dict(state)


def require_training_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                           path: Path | str) -> None:
    """Check that a checkpoint holds everything an exact resume reads (the step, optimizer
    state, RNG state, EMA) before any of it is used; a gap is a ``CheckpointError`` naming it."""
    problems = []
    if not isinstance(meta.get("step"), int) or isinstance(meta.get("step"), bool) or meta["step"] < 0:
        problems.append(f"its step is {meta.get('step')!r}, not a whole number")
    opt = meta.get("optimizer")
    if not (isinstance(opt, dict) and isinstance(opt.get("param_groups"), list)
            and isinstance(opt.get("scalars", {}), dict)):
        problems.append("it has no optimizer state (metadata 'optimizer')")
    rng = tensors.get("rng.torch")
    if rng is None or rng.dtype != torch.uint8:
        problems.append("it has no RNG state (tensor 'rng.torch')")
    if not any(k.startswith("ema.") for k in tensors):
        problems.append("it has no EMA weights (tensors 'ema.*')")
    if problems:
        raise CheckpointError(f"cannot resume from {str(path)!r}: {'; '.join(problems)}. Resume "
                              f"needs a checkpoint written by `ldm train`; to start from these "
                              f"weights instead, train a new run with model.init_from=RUN_DIR.")


def require_finite(tensors: dict[str, torch.Tensor], path: Path | str) -> None:
    """Refuse weights holding NaN or infinity, which would only ever give blank images."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{str(path)!r} holds non-finite weights (NaN or infinity) in "
                              f"{first_few(bad, 3)}; it would only give blank images. Use an "
                              f"earlier checkpoint (checkpoints/step_N.safetensors) or retrain.")


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state dict into tensors and JSON metadata."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, val in state.items():
            if isinstance(val, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = val
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                      place: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> None:
    """Load what ``optimizer_state`` wrote; ``place(param_index, tensor)`` may turn a saved full
    tensor into this process's shard (FSDP)."""
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = place(int(idx), val) if place else val
    for idx, scalars in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(scalars)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
