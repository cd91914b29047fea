"""The demo's diffusion training step as a callable to time: what ``make demo`` spends its time on.

One step is what ``ldm train experiment=demo`` runs per batch once latents are cached: the loss
of the class-conditional model on a batch of latents (forward), backward, AdamW on the denoiser
(UNet and trainable encoders), gradients cleared. The model is built from the demo's config
with seed 0 and laid out as ``ldm train`` lays it out (``execution.channels_last`` unless told
otherwise). The autoencoder is not run: the step starts from latents.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def demo_training_step(precision: str, *, channels_last: bool | None = None, lr: float = 1e-4,
                       batch_seed: int | None = None) -> Callable[[], None]:
    """A callable running one demo training step under ``precision`` (``fp32`` or ``bf16``).

    ``channels_last``: the memory layout of the UNet and autoencoder (None: the config's).
    ``lr``: AdamW's learning rate; at 0 AdamW still does all its work (moments, update, decay)
    but the weights stay those of step 0, so repeated steps stay comparable.
    ``batch_seed``: the latents are drawn from generator ``batch_seed`` and the class labels
    from ``batch_seed + 1``; None draws both from torch's global generator after the build.
    """
    from ldmcore.build import build_model
    from ldmcore.config import load
    from ldmcore.hardware import autocast
    from ldmcore.model import denoiser_params
    from ldmcore.nn.execution import for_training

    cfg = load(["experiment=demo"])
    torch.manual_seed(0)
    model = build_model(cfg)
    layout = cfg.execution.channels_last if channels_last is None else channels_last
    for_training(model.unet, channels_last=layout)
    for_training(model.autoencoder, channels_last=layout)
    opt = torch.optim.AdamW(denoiser_params(model).values(), lr=lr)
    size = cfg.trainer.batch_size
    latents_rng = None if batch_seed is None else torch.Generator().manual_seed(batch_seed)
    labels_rng = None if batch_seed is None else torch.Generator().manual_seed(batch_seed + 1)
    latents = torch.randn(size, *model.latent_shape(), generator=latents_rng)
    batch = {"class": torch.randint(0, 10, (size,), generator=labels_rng)}

    def step() -> None:
        with autocast(precision, torch.device("cpu")):
            loss = model.loss(batch, latents, generator=torch.Generator().manual_seed(0))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def demo_batch_size() -> int:
    """The demo's batch (``trainer.batch_size`` of ``experiment=demo`` on this machine)."""
    from ldmcore.config import load

    return load(["experiment=demo"]).trainer.batch_size
