"""The one line each command starts with: device, precision and threads (with why), the
model's parameters, its plugins and, for ``model.init_from``, what was loaded, what is new and
what is frozen. It extends the hardware line (``HardwareChoice.line``) rather than printing a
second one."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ldmcore.attach import Attachment
from ldmcore.hardware import HardwareChoice
from ldmcore.model import LatentDiffusion
from ldmcore.registry import Registry, default_registry
from ldmcore.runfolder import plugin_versions


def count(n: int) -> str:
    """A parameter count as people say it: 812, 45.3k, 1.27M, 1.10B."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def plugins_text(model: LatentDiffusion, registry: Registry | None = None) -> str:
    """Each plugin with the injections it feeds and its package and version."""
    versions = plugin_versions(model, registry or default_registry())
    shown = []
    for name, specs in model.conditioner.specs.items():
        where = versions.get(name)
        origin = f", {where['package']} {where['version']}".rstrip() if where else ""
        shown.append(f"{name} ({','.join(i.value for i in specs)}{origin})")
    return ", ".join(shown) or "none (unconditional)"


def startup_line(hardware: HardwareChoice, model: LatentDiffusion, registry: Registry | None = None,
                 trained: Iterable[torch.nn.Parameter] | None = None,
                 attached: Attachment | None = None) -> str:
    """The command's summary line. ``trained``: the parameters the optimizer updates (training
    only); ``attached``: what ``model.init_from`` loaded."""
    device = next(model.unet.parameters()).device
    total = sum(p.numel() for p in model.parameters())
    params = f"parameters: {count(total)}"
    if trained is not None:
        n = sum(p.numel() for p in trained)
        params += f" ({count(n)} trained, {count(total - n)} frozen)"
    parts = [f"{hardware.line()}", f"device: {device}", params, f"plugins: {plugins_text(model, registry)}"]
    if attached is not None:
        new = ", ".join(attached.new_plugins) or "no plugin"
        parts.append(f"init_from {attached.source}: {attached.loaded} tensors loaded, new: {new}")
    return "; ".join(parts)
