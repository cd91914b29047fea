"""Local ``transformers`` model folders that plugins load (a text encoder, a vision tower):
nothing is downloaded, and weights come only from safetensors files."""

from __future__ import annotations

from pathlib import Path

from ldmcore.errors import ConfigError


def check_model_folder(folder: Path, key: str, what: str) -> None:
    """Refuse a folder that is not a local transformers model with safetensors weights, naming
    the setting ``key`` that named it and what kind of model (``what``) belongs there."""
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{key}={str(folder)!r} is not a transformers model folder (no "
                          f"config.json there); name a local folder holding config.json, the "
                          f"weights and {what}.")
    if not any(folder.glob("*.safetensors")):
        raise ConfigError(f"{key}={str(folder)!r} holds no .safetensors weights; ldmcore loads "
                          f"weights only from safetensors files (a pickled pytorch_model.bin can "
                          f"run code when loaded). Convert it once with transformers: "
                          f"model.save_pretrained(folder, safe_serialization=True).")
