"""Job 4 of a condition plugin: shaping the sample around the network, optionally. A plugin may
give the first estimate the diffusion starts from (``base``), say which parts of the diffusion's
target its training loss should weigh more (``loss_weight``) and post-process decoded images
(``finish``); each reads the value ``resolve`` derived, never derives it again.
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

    def loss_weight(self, value: Any) -> torch.Tensor | None:
        """Per-element weights of the training loss for a batch of values, or None (the default):
        every element counts the same.

        A tensor of shape (B, 1 or latent_channels, *latent_size), finite and >= 0, at the size
        of the space the diffusion runs in (the latents, or the residual from a base): the
        squared error of each element is multiplied by its weight before the mean
        (``ldmcore.diffusion.loss.denoising_loss``), not renormalised, so ones everywhere is the
        plain loss bit for bit. Called at every training step with the resolved value, whether
        or not the step's condition dropout nulls this plugin (the weight is about the target,
        which dropout does not change), never when sampling. Return None rather than a uniform
        map. When several enabled plugins give weights, they multiply: each says how much an
        element matters for its own reason (e.g. inside a hole), and the product keeps every
        plugin's zero a zero. Example: ``inpaint`` weighs the hole 1 and the known region
        ``known_weight``, where the residual from its base is zero and the network only has to
        return the noise."""
        return None

    def finish(self, images: torch.Tensor, value: Any) -> torch.Tensor:
        """Post-process decoded samples in [-1, 1] (default: unchanged), e.g. paste the known
        pixels back (inpainting) or project onto the low-resolution input (super-resolution)."""
        return images


def loss_weight_problem(weight: Any, shape: tuple[int, ...]) -> str | None:
    """What is wrong with ``weight`` as ``loss_weight``'s answer for a diffusion target of
    ``shape`` (B, C, h, w), or None when nothing is."""
    b, c, *size = shape
    if not isinstance(weight, torch.Tensor):
        return f"loss_weight() returned {type(weight).__name__}; return a tensor or None."
    if weight.dim() != 4 or weight.shape[0] != b or weight.shape[1] not in (1, c) or list(weight.shape[2:]) != size:
        return (f"loss_weight() returned shape {tuple(weight.shape)}; it must be (batch, 1 or "
                f"latent_channels, *latent_size) = ({b}, 1 or {c}, {', '.join(map(str, size))}).")
    if not torch.isfinite(weight).all() or (weight < 0).any():
        return "loss_weight() returned a negative or non-finite weight; weights are finite and >= 0."
    return None
