"""Classifier-free guidance (Ho & Salimans 2022), batched: one forward for both branches.

``guided = uncond + scale * (cond - uncond)``, applied to the network's raw output (eps or v);
both are affine in the output at a fixed timestep, so guiding either is the same estimator.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ldmcore.conditioning import Conditioning

Network = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]


def guided(network: Network, cond: Conditioning, uncond: Conditioning, scale: float
           ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap ``network(z_t, t, conditioning)`` into ``f(z_t, t)`` with guidance ``scale``.

    ``scale == 1`` is the conditional model alone (one half-size forward); ``scale == 0`` the
    unconditional one. Otherwise both branches run in a single batched forward.
    """
    if scale == 1.0:
        return lambda z, t: network(z, t, cond)
    if scale == 0.0:
        return lambda z, t: network(z, t, uncond)
    both = Conditioning.cat([cond, uncond])

    def run(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out_c, out_u = network(torch.cat([z, z]), torch.cat([t, t]), both).chunk(2)
        return out_u + scale * (out_c - out_u)

    return run
