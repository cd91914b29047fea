"""What the backbone tells a plugin when it is built: the widths and sizes it must meet, the
frozen first stage, and where the paths in its config may point."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ldmcore.errors import ConfigError
from ldmcore.nn.inserted_layers import TransformerBlockShape
from ldmcore.nn.taps import ResidualTap


@dataclass(frozen=True)
class BackboneSpec:
    """What the backbone tells a plugin at build time (it never imports training code)."""

    latent_channels: int
    latent_size: tuple[int, int]
    context_dim: int  # width every cross-attention token must have
    image_channels: int
    image_size: tuple[int, int]
    # the frozen first stage, images in [-1, 1] -> scaled latents (e.g. for an inpainting plugin)
    encode: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, compare=False)
    root: Path | None = None  # folder that relative paths in plugin configs resolve against (a run's)
    trusted_paths: frozenset[str] = frozenset()  # paths the user gave on the command line
    # where residual plugins may add feature maps, with each map's width and size (nn/taps.py)
    residual_taps: tuple[ResidualTap, ...] = ()
    # the UNet's transformer blocks in forward order (width, heads): a plugin that inserts layers
    # into them (gated_attention, decoupled_crossattn) builds one per block, in this order
    transformer_blocks: tuple[TransformerBlockShape, ...] = ()

    def taps(self, adds_to: str) -> tuple[ResidualTap, ...]:
        """The residual taps that add to ``adds_to``: "skip" (ControlNet's: every skip
        connection and the middle block) or "encoder" (T2I-Adapter's: one per level)."""
        return tuple(tap for tap in self.residual_taps if tap.adds_to == adds_to)

    def local_path(self, value: str | Path, key: str) -> Path:
        """A file or folder named in a plugin's config (``key`` is its config path).

        While a model is built for training (``root`` unset) the user wrote the value: it is
        used as given. While a run is loaded (``root`` set) the value was read from the run's
        checkpoint metadata, which is data: it must resolve inside the run folder, unless the
        user gave it on the command line (``trusted_paths``), so a checkpoint can never point
        the program at a folder of its choosing.
        """
        path = Path(value).expanduser()
        if self.root is None or str(value) in self.trusted_paths:
            return path
        full = (self.root / path).resolve()
        if not full.is_relative_to(self.root.resolve()):
            raise ConfigError(f"{key}={str(value)!r} in the checkpoint of {str(self.root)!r} "
                              f"points outside the run folder; a path read from a checkpoint is "
                              f"only followed inside its run. Copy that folder into the run and "
                              f"name it relative to the run, or give it yourself: ldm sample "
                              f"run={str(self.root)} {key}=PATH.")
        return full
