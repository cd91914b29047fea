"""The reference implementations the parity tests compare against: k-diffusion's samplers and
diffusers' schedulers, driven by the same denoiser and the same noise as ldmcore's samplers.

k-diffusion 0.1.1.post1 is installed without its dependencies (``make setup``): its training
stack pins numpy < 2 (dctorch) and needs a torchvision built for the installed torch, while its
samplers need only scipy, torchsde, torchdiffeq and one helper of its ``utils`` module.
``k_sampling`` imports ``k_diffusion.sampling`` without running the package's ``__init__``
(which imports the training stack); where ``k_diffusion.utils`` cannot be imported for want of
torchvision (image I/O), the module it is given instead holds k-diffusion's one helper that the
samplers call, ``append_dims``, with k-diffusion's definition.
"""

from __future__ import annotations

import importlib
import inspect
import importlib.util
import sys
import types
from collections.abc import Callable

import pytest
import torch


def _append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """k-diffusion's ``utils.append_dims``: trailing singleton dimensions up to ``target_dims``."""
    missing = target_dims - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * missing]


def k_sampling() -> types.ModuleType:
    """``k_diffusion.sampling``, or skip the test when k-diffusion is not installed."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("k-diffusion is not installed (make setup installs it)")
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault("k_diffusion", package)
    try:
        importlib.import_module("k_diffusion.utils")
    except ImportError:
        helpers = types.ModuleType("k_diffusion.utils")
        helpers.append_dims = _append_dims
        sys.modules["k_diffusion.utils"] = helpers
        package.utils = helpers
    return importlib.import_module("k_diffusion.sampling")


class SharedNoise:
    """k-diffusion's ``noise_sampler(sigma, sigma_next)`` drawing from a seeded generator as
    ldmcore's samplers do (CPU float32 normals of the sample's shape, then cast), so that both
    see the same noise in the same order.

    Like k-diffusion's Brownian tree it is Brownian motion in sigma: an interval that starts
    where the previous one started and reaches further (DPM++ SDE's [sigma, sigma_mid], then
    [sigma, sigma_next]) shares the previous increment; disjoint intervals get fresh draws."""

    def __init__(self, like: torch.Tensor, seed: int) -> None:
        self.like = like
        self.generator = torch.Generator().manual_seed(seed)
        self.last: tuple[float, float, torch.Tensor] | None = None

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        start, end = float(sigma), float(sigma_next)
        fresh = torch.randn(self.like.shape, generator=self.generator, dtype=torch.float32).to(self.like)
        if self.last is not None and self.last[0] == start and end < self.last[1]:
            shared = (start - self.last[1]) / (start - end)
            fresh = shared ** 0.5 * self.last[2] + (1 - shared) ** 0.5 * fresh
        self.last = (start, end, fresh)
        return fresh


def run_k_sampler(name: str, denoiser: Callable[..., torch.Tensor], x: torch.Tensor,
                  sigmas: torch.Tensor, seed: int = 0, **knobs) -> torch.Tensor:
    """k-diffusion's ``sample_NAME`` on ``denoiser`` from ``x`` over ``sigmas`` (same dtype)."""
    fn = getattr(k_sampling(), f"sample_{name}")
    kwargs = dict(knobs)
    if "noise_sampler" in inspect.signature(fn).parameters:
        kwargs["noise_sampler"] = SharedNoise(x, seed)
    return fn(denoiser, x, sigmas.to(x.dtype), disable=True, **kwargs)
