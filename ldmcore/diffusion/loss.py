"""The denoising loss: the squared error of the network's output against its target, weighted
per element (where condition plugins say what matters, ``SampleShaping.loss_weight``) and per
sample (Min-SNR-gamma, ``NoiseSchedule.min_snr_weight``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def denoising_loss(out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                   sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """mean(weight * (out - target)^2), every sample's mean first scaled by ``sample_weight``.

    ``weight`` (broadcast to ``out``'s shape) multiplies each element's squared error and is not
    renormalised: a map of ones is the plain mean squared error, bit for bit, and a map of 0.1
    outside a hole makes those elements count a tenth as much (the loss's scale drops with it,
    which Adam's step does not see). ``sample_weight`` (B,) multiplies each sample's mean.
    Computed in float32 whatever the network ran in. Unweighted, it is ``F.mse_loss``, whose
    fused backward rounds differently from the composed one: a run without weights trains
    exactly as before the weights existed.
    """
    if weight is None and sample_weight is None:
        return F.mse_loss(out.float(), target.float())
    squared = (out.float() - target.float()).pow(2)
    if weight is not None:
        squared = squared * weight.to(squared)
    if sample_weight is None:
        return squared.mean()
    return (sample_weight.to(squared) * squared.flatten(1).mean(1)).mean()
