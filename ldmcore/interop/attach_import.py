"""``ldm import SOURCE OUT_DIR attach_to=RUN``: a foreign plugin's weights as a plugin attached to
a run (an imported Stable Diffusion run, or any run whose UNet they fit).

What SOURCE is decides the plugin: a diffusers ControlNet or T2I-Adapter folder, or an original
ControlNet file (``residual_import.py``), or an original IP-Adapter file (``ip_adapter_import.py``).
Each reader returns a ``ForeignPlugin`` (``foreign_plugin.py``); what follows is the same for
all: the new run is ``RUN`` with the plugin enabled (``conditions.<name>``), attached as
``model.init_from=RUN`` attaches it (the backbone is ``RUN``'s, byte for byte;
``plugins/<name>.safetensors`` carries all the plugin adds), written to a temporary folder and
moved into place only once complete. Folders the run
reads (the text encoder of ``RUN``, an image encoder) are copied in, since a run follows paths
only inside its own folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from ldmcore import checkpoint
from ldmcore.attach import attach_pretrained, save_plugin_weights
from ldmcore.build import build_model
from ldmcore.config import INSTANCE_OF
from ldmcore.errors import CheckpointError, ConfigError
from ldmcore.interop.convert import PICKLES, TEXT_DIR
from ldmcore.interop.foreign_plugin import ForeignPlugin
from ldmcore.interop.ip_adapter_import import is_ip_adapter_file, read_ip_adapter
from ldmcore.interop.residual_import import read_residual
from ldmcore.runfolder import RunFolder, run_config, run_metadata


def read_foreign_plugin(source: Path, **options: Any) -> ForeignPlugin:
    """The reader SOURCE calls for: an IP-Adapter file, or a ControlNet / T2I-Adapter."""
    if source.suffix in PICKLES:
        raise CheckpointError(
            f"{str(source)!r} is a pickled PyTorch file; ldmcore reads only .safetensors "
            f"(unpickling can run arbitrary code). Convert it once in a trusted environment: "
            f"sd = torch.load(path, weights_only=True), then for an IP-Adapter (a dict of "
            f"'image_proj' and 'ip_adapter') safetensors.torch.save_file({{f'{{part}}.{{k}}': v "
            f"for part in sd for k, v in sd[part].items()}}, 'ip-adapter.safetensors'), for a "
            f"ControlNet safetensors.torch.save_file(sd.get('state_dict', sd), 'control.safetensors').")
    if source.is_file() and is_ip_adapter_file(checkpoint.keys(source)):
        return read_ip_adapter(source, **options)
    return read_residual(source, **options)


def import_attached(source: Path | str, out_dir: Path | str, attach_to: Path | str, *,
                    name: str | None = None, overwrite: bool = False, **options: Any) -> Path:
    """Write the run ``out_dir``: ``attach_to`` with the plugin read from ``source``."""
    source, out, base = Path(source), Path(out_dir), Path(attach_to)
    if not source.exists():
        raise ConfigError(f"{str(source)!r} does not exist; attach_to= imports a diffusers "
                          f"ControlNet / T2I-Adapter folder, or an original ControlNet or "
                          f"IP-Adapter .safetensors file.")
    foreign = read_foreign_plugin(source, **options)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{str(out)!r} already exists and is not empty; choose a new OUT_DIR or "
                          f"pass overwrite=true.")
    RunFolder(out).check_claim(resume=False, overwrite=True, what="OUT_DIR")
    name = name or foreign.plugin
    base_cfg = run_config(base)
    if name in base_cfg.conditions:
        raise ConfigError(f"attach_to={str(base)!r} already has a condition {name!r}; give the "
                          f"plugin another name (name=...).")
    section = {**foreign.section, **({INSTANCE_OF: foreign.plugin} if name != foreign.plugin else {})}
    cfg = base_cfg.model_copy(update={
        "name": out.name, "run_dir": out, "conditions": {**base_cfg.conditions, name: section},
        "model": base_cfg.model.model_copy(update={"init_from": base})})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        folders = {TEXT_DIR: base / TEXT_DIR} if (base / TEXT_DIR).is_dir() else {}
        for inside, there in {**folders, **foreign.folders}.items():
            shutil.copytree(there, tmp / inside)
        model = build_model(cfg, root=tmp)
        att = attach_pretrained(model, base)
        enc = model.conditioner.encoders[name]
        checkpoint.load_into(enc, foreign.tensors(model, enc), foreign.plugin, source)
        _write_run(tmp, cfg, model, att, {"source": str(source), "attached_to": str(base), "plugin": name})
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except CheckpointError as err:
        raise CheckpointError(f"attach_to={str(base)!r}: {err}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_run(root: Path, cfg, model, att, record: dict[str, str]) -> None:
    run = RunFolder(root)
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    run.mark()
    run.config.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    meta = run_metadata(cfg, model, 0, source=record)
    with torch.no_grad():
        checkpoint.save(run.last, dict(model.state_dict()), meta)
    save_plugin_weights(root / "plugins", model, att, {"step": 0})
    (root / "import.json").write_text(json.dumps(record, indent=1))
