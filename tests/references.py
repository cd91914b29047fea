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

from ldmcore.diffusion.steps import BrownianNoise


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


def shared_noise(like: torch.Tensor, seed: int) -> BrownianNoise:
    """k-diffusion's ``noise_sampler`` drawing what ldmcore's samplers draw from ``seed`` (CPU
    float32 normals, Brownian in sigma as k-diffusion's tree): the same noise in the same order."""
    return BrownianNoise(like, torch.Generator().manual_seed(seed))


def run_k_sampler(name: str, denoiser: Callable[..., torch.Tensor], x: torch.Tensor,
                  sigmas: torch.Tensor, seed: int = 0, **knobs) -> torch.Tensor:
    """k-diffusion's ``sample_NAME`` on ``denoiser`` from ``x`` over ``sigmas`` (same dtype)."""
    fn = getattr(k_sampling(), f"sample_{name}")
    kwargs = dict(knobs)
    if "noise_sampler" in inspect.signature(fn).parameters:
        kwargs["noise_sampler"] = shared_noise(x, seed)
    return fn(denoiser, x, sigmas.to(x.dtype), disable=True, **kwargs)
