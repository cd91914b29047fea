"""Job 4 of a condition plugin: shaping the sample around the network, optionally. A plugin may
give the first estimate the diffusion starts from (``base``) and may post-process decoded images
(``finish``); both read the value ``resolve`` derived, never derive it again.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch


class SampleShaping:
    """The hooks of job 4. Defaults: no base, images unchanged."""

    name: ClassVar[str]

    @property
    def provides_base(self) -> bool:
        """Whether ``base()`` gives a first estimate of the clean latents (default False).
        At most one enabled plugin may; the model then diffuses the residual (see ``base``)."""
        return False

    def base(self, value: Any) -> torch.Tensor:
        """A first estimate of the clean latents from a batch of values, (B, latent_channels,
        *latent_size) in the first stage's scaled latent space: e.g. the bicubic upsampling of a
        low-resolution image, or a hole filled from its border. Called only when
        ``provides_base`` is True, never dropped or nulled (it is not a network input but the
        origin of the space the diffusion runs in): the model diffuses
        ``residual_scale * (z_0 - base)`` and adds the base back after sampling, so an untrained
        denoiser already returns the base, and training spends itself on what the base misses
        (residual diffusion, as SRDiff, Li et al. 2022, and ResShift, Yue et al. 2023)."""
        raise NotImplementedError(f"plugin {self.name!r} says provides_base but has no base()")

    def finish(self, images: torch.Tensor, value: Any) -> torch.Tensor:
        """Post-process decoded samples in [-1, 1] (default: unchanged), e.g. paste the known
        pixels back (inpainting) or project onto the low-resolution input (super-resolution)."""
        return images
