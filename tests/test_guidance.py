"""Guidance - global, per plugin (compositional), rescaled, in an interval - against its
formulas computed from separate calls, and against an exact two-condition model.

The toy plugins are real ``ConditionEncoder``s routed by the real ``Conditioner``; the
"network" is the exact denoiser of a two-attribute Gaussian mixture, so what each branch must
return, and what guidance must do to each attribute, is known in closed form.
"""

from __future__ import annotations

import math

import pytest
import torch

from ldmcore.conditioning import (BackboneSpec, ConditionEncoder, Conditioner, Conditioning,
                                  EncoderConfig, Injection, OutputSpec)
from ldmcore.diffusion.guidance import Guidance, guide, rescale_guided
from ldmcore.diffusion.samplers import SAMPLERS
from ldmcore.diffusion.sigmas import karras_sigmas
from ldmcore.errors import ConfigError



BACKBONE = BackboneSpec(latent_channels=2, latent_size=(1, 1), context_dim=8, image_channels=1,
                        image_size=(8, 8))


class Attribute(ConditionEncoder):
    """A binary attribute as a one-hot vector; its null is zeros."""

    injections = (Injection.VECTOR,)

    def output_specs(self) -> dict[Injection, OutputSpec]:
        return {Injection.VECTOR: OutputSpec(Injection.VECTOR, (2,))}

    def forward(self, value: torch.Tensor) -> dict[Injection, torch.Tensor]:
        return {Injection.VECTOR: torch.nn.functional.one_hot(value.long(), 2).double()}

    def null(self, batch_size: int) -> dict[Injection, torch.Tensor]:
        return {Injection.VECTOR: torch.zeros(batch_size, 2, dtype=torch.float64)}


class AttributeA(Attribute):
    name = "a"


class AttributeB(Attribute):
    name = "b"


def conditioner() -> Conditioner:
    return Conditioner({"a": AttributeA(EncoderConfig(), BACKBONE),
                        "b": AttributeB(EncoderConfig(), BACKBONE)})


M, TAU = 0.5, 0.5  # attribute i puts dimension i at +-M, with spread TAU


class MixtureDenoiser:
    """Exact E[x0 | x] for x0_i ~ N(+-M, TAU^2) (sign from attribute i, or 50/50 when that
    attribute is null), dimensions independent. Records the batch size of each call."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        self.batches.append(x.shape[0])
        var = TAU ** 2 + sigma.double()[:, None] ** 2
        means = torch.tensor([-M, M], dtype=torch.float64)
        out = []
        for dim in range(2):
            onehot = cond.vector[:, 2 * dim: 2 * dim + 2]
            prior = torch.where(onehot.sum(1, keepdim=True) > 0, onehot, torch.full_like(onehot, 0.5))
            xd = x[:, dim: dim + 1]
            logw = prior.log() - (xd - means) ** 2 / (2 * var)
            w = logw.softmax(dim=1)
            out.append((w * (means + TAU ** 2 / var * (xd - means))).sum(1))
        return torch.stack(out, dim=1)


def branch(cond: Conditioner, values: dict, n: int, keep: set | None) -> Conditioning:
    return cond(values, n, keep=keep)


def labels(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randint(0, 2, (n,), generator=g), "b": torch.randint(0, 2, (n,), generator=g)}


# -- branches -----------------------------------------------------------------------------------

def test_branches_spell_out_global_and_compositional_guidance() -> None:
    plugins = ["a", "b"]
    assert Guidance(1.0).branches(plugins) == ([None], [1.0], [1.0])
    assert Guidance(0.0).branches(plugins) == ([frozenset()], [1.0], [1.0])
    assert Guidance(4.0).branches(plugins) == ([None, frozenset()], [4.0, -3.0], [1.0, 0.0])
    keeps, weights, reference = Guidance(3.0, {"a": 5.0}).branches(plugins)
    assert keeps == [frozenset({"a"}), frozenset({"b"}), frozenset()]
    assert weights == [5.0, 3.0, -7.0] and reference == [1.0, 1.0, -1.0]
    # a plugin at scale 0 drops out of every branch
    assert Guidance(2.0, {"b": 0.0}).branches(plugins) == (
        [frozenset({"a"}), frozenset()], [2.0, -1.0], [1.0, 0.0])


def test_unknown_plugin_scale_names_the_models_conditions() -> None:
    with pytest.raises(ConfigError, match=r"guidance\.klass names no condition.*'a'.*a, b"):
        Guidance(3.0, {"klass": 2.0}).branches(["a", "b"])


@pytest.mark.parametrize("kwargs", [{"rescale": 1.5}, {"interval": (2.0, 1.0)}])
def test_bad_rescale_or_interval_is_a_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        Guidance(3.0, **kwargs)


# -- the guided estimate against separate calls -------------------------------------------------

def setup(n: int = 5):
    cond = conditioner()
    values = labels(n, 0)
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    sigma = torch.full((n,), 1.3, dtype=torch.float64)
    net = MixtureDenoiser()
    d = {name: net(x, sigma, cond=branch(cond, values, n, keep))
         for name, keep in (("all", None), ("a", {"a"}), ("b", {"b"}), ("none", set()))}
    net.batches.clear()
    return cond, values, x, sigma, net, d


@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5, 7.5, -1.0])
def test_global_guidance_is_uncond_plus_scale_times_the_difference(scale: float) -> None:
    cond, values, x, sigma, net, d = setup()
    out = guide(net, cond, values, 5, Guidance(scale))(x, sigma)
    torch.testing.assert_close(out, d["none"] + scale * (d["all"] - d["none"]), rtol=0, atol=1e-12)
    assert net.batches == ([5] if scale in (0.0, 1.0) else [10])  # one call per step


def test_per_plugin_guidance_is_composable_diffusion_in_one_batched_call() -> None:
    cond, values, x, sigma, net, d = setup()
    out = guide(net, cond, values, 5, Guidance(1.5, {"a": 4.0}))(x, sigma)
    expected = d["none"] + 4.0 * (d["a"] - d["none"]) + 1.5 * (d["b"] - d["none"])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert net.batches == [15]  # three branches, one forward


def test_one_plugin_with_its_own_scale_is_global_guidance() -> None:
    cond = Conditioner({"a": AttributeA(EncoderConfig(), BACKBONE)})
    values = labels(4, 2)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sigma = torch.full((4,), 0.7, dtype=torch.float64)

    def net(x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        padded = Conditioning(vector=torch.cat([cond.vector, torch.zeros_like(cond.vector)], 1))
        return MixtureDenoiser()(x, sigma, padded)

    torch.testing.assert_close(guide(net, cond, values, 4, Guidance(1.0, {"a": 3.0}))(x, sigma),
                               guide(net, cond, values, 4, Guidance(3.0))(x, sigma))


def test_guidance_of_a_linear_denoiser_extrapolates_the_condition() -> None:
    """For D(x, c) = A x + B c, guidance at scale s is D evaluated at u + s (c - u)."""
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 2, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g,
                                                                           dtype=torch.float64)

    def linear(x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return x @ a + cond.vector @ b

    cond = conditioner()
    values = labels(5, 4)
    c, u = branch(cond, values, 5, None), branch(cond, values, 5, set())
    x = torch.randn(5, 2, generator=g, dtype=torch.float64)
    sigma = torch.ones(5, dtype=torch.float64)
    extrapolated = Conditioning(vector=u.vector + 4.0 * (c.vector - u.vector))
    torch.testing.assert_close(guide(linear, cond, values, 5, Guidance(4.0))(x, sigma),
                               linear(x, sigma, extrapolated))


def test_guidance_interval_runs_the_plain_conditional_model_outside_it() -> None:
    cond, values, x, _, net, _ = setup()
    g = Guidance(4.0, interval=(0.5, 2.0))
    model = guide(net, cond, values, 5, g)
    inside = torch.full((5,), 1.3, dtype=torch.float64)
    outside = torch.full((5,), 3.0, dtype=torch.float64)
    plain = net(x, outside, cond=branch(cond, values, 5, None))
    net.batches.clear()
    torch.testing.assert_close(model(x, outside), plain, rtol=0, atol=0)
    assert net.batches == [5]  # half the cost where guidance is off
    guided = guide(net, cond, values, 5, Guidance(4.0))(x, inside)
    torch.testing.assert_close(model(x, inside), guided, rtol=0, atol=0)
    mixed = torch.tensor([1.3, 3.0, 1.3, 3.0, 0.2], dtype=torch.float64)
    out = model(x, mixed)
    for i, on in enumerate([True, False, True, False, False]):
        ref = guide(net, cond, values, 5, Guidance(4.0 if on else 1.0))(x, mixed)
        torch.testing.assert_close(out[i], ref[i], rtol=0, atol=1e-12)


def test_a_plugin_at_scale_0_stays_out_of_the_plain_branch_outside_the_interval() -> None:
    """Scale 0 drops a plugin from every branch: outside the interval the model runs the
    conditional branch of the other plugins alone, not of all of them."""
    cond, values, x, _, net, _ = setup()
    model = guide(net, cond, values, 5, Guidance(4.0, {"b": 0.0}, interval=(0.5, 2.0)))
    outside = torch.full((5,), 3.0, dtype=torch.float64)
    torch.testing.assert_close(model(x, outside), net(x, outside, cond=branch(cond, values, 5, {"a"})),
                               rtol=0, atol=0)


def test_rescale_matches_the_unguided_std_per_sample() -> None:
    """Lin et al. 2023, Algorithm 2: phi = 1 gives the reference's std, phi mixes linearly."""
    g = torch.Generator().manual_seed(4)
    guided = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) * 5
    reference = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    full = rescale_guided(guided, reference, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), reference.std(dim=(1, 2, 3)))
    half = rescale_guided(guided, reference, 0.5)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * guided)
    assert torch.equal(rescale_guided(guided, reference, 0.0), guided)


class PredictingV:
    """The mixture denoiser presented as a v-predicting network's (``prediction = "v"``)."""

    prediction = "v"

    def __init__(self, net: MixtureDenoiser) -> None:
        self.net = net

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.net(x, sigma, cond)


def outputs_of(prediction: str, x: torch.Tensor, sigma: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """eps = (x - D) / sigma; v = sqrt(abar) eps - sqrt(1 - abar) D with sqrt(abar) = c_in =
    1 / sqrt(1 + sigma^2) and sqrt(1 - abar) = sigma c_in (Salimans & Ho 2022 in the sigma view)."""
    s = sigma[:, None]
    eps = (x - d) / s
    c_in = (1 + s ** 2).rsqrt()
    return eps if prediction == "eps" else c_in * eps - s * c_in * d


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_rescale_is_diffusers_rescale_noise_cfg_on_the_network_output(prediction: str) -> None:
    """Default rescale space: diffusers' ``rescale_noise_cfg`` applied to the guided eps or v
    (``noise_pred``) against the conditional one; the denoised estimate follows from it."""
    pipeline = pytest.importorskip("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion")
    cond, values, x, sigma, net, d = setup(n=6)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2
    sig = sigma[:1].expand(6).contiguous()
    d_all = net(x, sig, cond=branch(cond, values, 6, None))
    d_none = net(x, sig, cond=branch(cond, values, 6, set()))
    out_all, out_none = outputs_of(prediction, x, sig, d_all), outputs_of(prediction, x, sig, d_none)
    guided = pipeline.rescale_noise_cfg(out_none + 5.0 * (out_all - out_none), out_all, 0.7)
    model = net if prediction == "eps" else PredictingV(net)
    out = guide(model, cond, values, 6, Guidance(5.0, rescale=0.7))(x, sig)
    torch.testing.assert_close(outputs_of(prediction, x, sig, out), guided, rtol=1e-12, atol=0)
    # and it is not the same as rescaling the denoised estimate
    denoised = guide(model, cond, values, 6, Guidance(5.0, rescale=0.7, rescale_space="denoised"))
    expected = rescale_guided(d_none + 5.0 * (d_all - d_none), d_all, 0.7)
    torch.testing.assert_close(denoised(x, sig), expected, rtol=0, atol=1e-12)
    assert float((denoised(x, sig) - out).abs().max()) > 1e-3


def test_unknown_rescale_space_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="output, denoised.*got 'image'"):
        Guidance(3.0, rescale=0.5, rescale_space="image")


# -- the demonstration: raising one plugin's scale raises that plugin's fidelity -----------------

def fidelity(scales: dict[str, float], n: int = 4000) -> tuple[float, float]:
    """Sample the exact two-attribute model with per-plugin guidance (DPM-Solver++(2M), 25
    Karras steps) and read each attribute back: the sign of its dimension."""
    cond = conditioner()
    values = labels(n, 7)
    model = guide(MixtureDenoiser(), cond, values, n, Guidance(1.0, scales))
    sigmas = karras_sigmas(25, 0.002, 80.0)
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    out = SAMPLERS["dpmpp_2m"](model, x * math.sqrt(80.0 ** 2 + TAU ** 2 + M ** 2), sigmas)
    read = (out > 0).long()
    return float((read[:, 0] == values["a"]).double().mean()), float((read[:, 1] == values["b"]).double().mean())


def test_raising_one_plugins_scale_raises_that_plugins_fidelity_only() -> None:
    base_a, base_b = fidelity({"a": 1.0, "b": 1.0})
    # without guidance each attribute is read right with probability Phi(M / TAU) = 0.841
    phi = 0.5 * (1 + math.erf(M / TAU / math.sqrt(2)))
    assert base_a == pytest.approx(phi, abs=0.02) and base_b == pytest.approx(phi, abs=0.02)
    up_a, same_b = fidelity({"a": 4.0, "b": 1.0})
    assert up_a > base_a + 0.08
    assert same_b == base_b  # the other attribute's samples do not move at all
    a_again, up_b = fidelity({"a": 1.0, "b": 4.0})
    assert up_b > base_b + 0.08 and a_again == base_a
