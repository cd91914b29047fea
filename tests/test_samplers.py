"""Every sampler against exact answers, as one shared contract (diffusers' mixin style).

Truth: for Gaussian data N(MU, COV) the exact denoiser in sigma space is closed form,
``D(x, sigma) = MU + COV (COV + sigma^2 I)^-1 (x - MU)``, and the exact probability-flow ODE
carries the marginal at ``sigma_max``, N(MU, COV + sigma_max^2 I), to N(MU, COV). Every
deterministic sampler is then an affine map of its start, so the output mean and covariance
are computed *exactly* from three runs (the mean and the mean plus each column of a Cholesky
factor) - no Monte Carlo - and their error must fall with the step count at the order the
sampler's paper states. Stochastic samplers are checked in distribution over many seeds:
against the exact moments of ancestral sampling where those are closed form, and for
convergence to the data otherwise.
"""

from __future__ import annotations

import math

import pytest
import torch

from ldmcore.hookspecs import hookimpl

from ldmcore.diffusion.denoisers import DiscreteDenoiser
from ldmcore.diffusion.samplers import SAMPLERS, SamplerSpec, ancestral_step
from ldmcore.diffusion.schedule import NoiseSchedule, Prediction
from ldmcore.diffusion.sigmas import (SigmaKind, SigmaPlan, discrete_sigmas, exponential_sigmas,
                                      karras_sigmas, make_timesteps)
from ldmcore.errors import ConfigError, PluginClash
from ldmcore.registry import build_registry



SIGMA_MIN, SIGMA_MAX = 0.002, 80.0  # Karras et al.'s range
MU = torch.tensor([1.5, -0.5], dtype=torch.float64)
COV = torch.tensor([[0.25, 0.1], [0.1, 0.5]], dtype=torch.float64)
EYE = torch.eye(2, dtype=torch.float64)


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[x0 | x0 + sigma n = x] for x0 ~ N(MU, COV), per sample of a (B, 2) batch."""
    gain = COV @ torch.linalg.inv(COV + sigma.double().view(-1, 1, 1) ** 2 * EYE)
    return MU + ((x - MU)[:, None, :] @ gain.transpose(1, 2))[:, 0]


def output_moments(name: str, steps: int, **knobs) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact output mean and covariance of a deterministic sampler started from the true
    marginal at SIGMA_MAX, with Karras sigmas (three runs of the affine map)."""
    chol = torch.linalg.cholesky(COV + SIGMA_MAX ** 2 * EYE)
    starts = torch.cat([MU[None], MU[None] + chol.T])
    out = SAMPLERS[name](gaussian_denoiser, starts, karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX), **knobs)
    columns = (out[1:] - out[0]).T
    return out[0], columns @ columns.T


def reference_covariance() -> torch.Tensor:
    """The exact flow to SIGMA_MIN, then the last step every sampler takes: x -> D(x)."""
    gain = COV @ torch.linalg.inv(COV + SIGMA_MIN ** 2 * EYE)
    return gain @ (COV + SIGMA_MIN ** 2 * EYE) @ gain.T


# deterministic configurations and the order of convergence their papers state
ORDERS = [
    ("euler", {}, 1),  # Karras et al. 2022, Euler
    ("ddim", {"eta": 0.0}, 1),  # Song et al. 2021: DDIM is Euler in the sigma view
    ("euler_ancestral", {"eta": 0.0}, 1),
    ("heun", {}, 2),  # Karras et al. 2022, Algorithm 1
    ("dpmpp_2m", {}, 2),  # Lu et al. 2022, DPM-Solver++(2M)
    ("dpmpp_2m_sde", {"eta": 0.0}, 2),
    # k-diffusion's and diffusers' 3M: half the second-difference term, second order
    ("dpmpp_3m_sde", {"eta": 0.0}, 2),
    ("dpmpp_3m_sde_third_order", {"eta": 0.0}, 3),  # the full term: third order
    ("dpm_2", {}, 2),  # DPM-Solver-2 (Lu et al. 2022) on the ODE
    ("dpm_2_ancestral", {"eta": 0.0}, 2),
    ("dpmpp_2s_ancestral", {"eta": 0.0}, 2),  # DPM-Solver++(2S)
    ("dpmpp_sde", {"eta": 0.0}, 2),
    ("lms", {}, 4),  # Adams-Bashforth, order 4
    ("lms", {"order": 2}, 2),
    ("deis", {}, 2),  # Zhang & Chen 2023: order = the polynomial's points
    ("deis", {"order": 3}, 3),
    ("unipc", {"order": 1}, 2),  # Zhao et al. 2023: UniC adds one to UniP's order
    ("unipc", {}, 3),
    ("unipc", {"order": 3}, 4),
]
STOCHASTIC_ONLY = {"ddpm", "lcm"}  # no deterministic form


# where the asymptotic order shows only at more steps: k-diffusion's 3M has a third-order
# term at half weight, which hides its second-order error below ~80 steps (rates 2.6, 1.4 there)
STEPS = {"dpmpp_3m_sde": (80, 160, 320)}


def test_every_registered_sampler_has_a_convergence_check() -> None:
    assert set(SAMPLERS) == {name for name, _, _ in ORDERS} | STOCHASTIC_ONLY


@pytest.mark.parametrize("name,knobs,order", ORDERS,
                         ids=[n + "".join(f"-{k}{v:g}" for k, v in kn.items()) for n, kn, _ in ORDERS])
def test_output_distribution_converges_at_the_papers_order(name: str, knobs: dict, order: int) -> None:
    """The rate over two step doublings within 0.3 of the order, each doubling's within 0.7
    (multistep methods' per-doubling rates wander on Karras' strongly nonuniform grid)."""
    target = reference_covariance()
    errors = []
    for steps in STEPS.get(name, (40, 80, 160)):
        mean, cov = output_moments(name, steps, **knobs)
        errors.append(float((cov - target).norm() + (mean - MU).norm()))
    rates = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert abs(sum(rates) / len(rates) - order) < 0.3, (errors, rates)
    assert all(abs(r - order) < 0.7 for r in rates), (errors, rates)
    assert errors[-1] < {1: 0.05, 2: 4e-3, 3: 5e-4, 4: 1e-4}[order], errors
    # and the target is the data's own distribution to within the last step's sigma_min
    assert float((target - COV).norm()) < 1e-4


def test_second_order_samplers_beat_first_order_at_equal_evaluations() -> None:
    """At 80 network evaluations (Heun: 40 steps), the second-order methods are far closer."""
    target = reference_covariance()

    def error(name: str, evals: int, **knobs) -> float:
        mean, cov = output_moments(name, SAMPLERS[name].steps_for(evals), **knobs)
        return float((cov - target).norm() + (mean - MU).norm())

    euler = error("euler", 80)
    assert error("heun", 80) < euler / 3 and error("dpmpp_2m", 80) < euler / 10


# -- stochastic samplers ----------------------------------------------------------------------

STOCHASTIC = {"ddpm", "euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_3m_sde_third_order",
              "lcm", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde"}

MU1, S1 = 1.5, 0.5  # one-dimensional data for the Monte Carlo checks
N = 40_000


def scalar_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s2 = sigma.double().view(-1, *([1] * (x.dim() - 1))) ** 2
    return (MU1 + S1 ** 2 / (S1 ** 2 + s2) * (x - MU1)).to(x.dtype)


def scalar_run(name: str, steps: int, seed: int, **knobs) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = MU1 + math.sqrt(S1 ** 2 + SIGMA_MAX ** 2) * torch.randn(40, N // 40, generator=g,
                                                                dtype=torch.float64)
    return SAMPLERS[name](scalar_denoiser, x, karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX),
                          generator=g, **knobs)


def consistency_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """LCM's split of a step: all the way down to the estimate, then fresh noise sigma_next."""
    return 0.0, sigma_next


def ancestral_std(steps: int, eta: float, split=ancestral_step) -> float:
    """Exact output std of ancestral sampling on this data: each step is
    x' - MU = (k + (s_down/s)(1 - k)) (x - MU) + s_up n, with k = S^2 / (S^2 + s^2)."""
    levels = karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX).tolist()
    var = S1 ** 2 + SIGMA_MAX ** 2
    for s, s_next in zip(levels, levels[1:]):
        k = S1 ** 2 / (S1 ** 2 + s ** 2)
        down, up = split(s, s_next, eta)
        var = (k + down / s * (1 - k)) ** 2 * var + up ** 2
    return math.sqrt(var)


@pytest.mark.parametrize("name,eta", [("ddpm", 1.0), ("euler_ancestral", 1.0),
                                      ("euler_ancestral", 0.5), ("ddim", 0.5), ("lcm", 1.0)])
def test_ancestral_samplers_match_their_exact_output_distribution(name: str, eta: float) -> None:
    knobs = {} if name in STOCHASTIC_ONLY else {"eta": eta}
    stds = []
    for steps in (5, 40):
        out = scalar_run(name, steps, seed=steps, **knobs)
        std = ancestral_std(steps, eta, consistency_step if name == "lcm" else ancestral_step)
        assert abs(out.mean().item() - MU1) < 5 * std / math.sqrt(N)
        assert abs(out.std().item() - std) < 5 * std / math.sqrt(2 * N), (steps, out.std().item(), std)
        stds.append(std)
    # converging to the data: ancestral steps drop Var[x0 | x], so they approach it from below;
    # not LCM, whose every step keeps only the denoiser's estimate (a posterior mean here, not a
    # sample as a consistency model's is)
    assert stds[0] < stds[1] < S1 and (name == "lcm" or S1 - stds[1] < 0.1)


@pytest.mark.parametrize("name", ["dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_3m_sde_third_order",
                                  "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde"])
def test_sde_samplers_converge_in_distribution(name: str) -> None:
    errors = []
    for steps in (5, 20, 80):
        out = scalar_run(name, steps, seed=steps)
        errors.append(abs(out.std().item() - S1))
        assert abs(out.mean().item() - MU1) < 5 * S1 / math.sqrt(N) + 0.003
    noise = 5 * S1 / math.sqrt(2 * N)  # five standard errors of the std over N samples
    assert errors[0] > errors[1] > errors[2] or errors[0] > 10 * noise > 10 * errors[1], errors
    assert errors[2] < 0.01 + noise


@pytest.mark.parametrize("a,b", [("ddpm", ("euler_ancestral", {"eta": 1.0})),
                                 ("euler", ("ddim", {"eta": 0.0})),
                                 ("euler", ("euler_ancestral", {"eta": 0.0})),
                                 ("dpmpp_2m", ("dpmpp_2m_sde", {"eta": 0.0})),
                                 ("dpm_2", ("dpm_2_ancestral", {"eta": 0.0})),
                                 (("dpmpp_sde", {"eta": 0.0}), ("dpmpp_2s_ancestral", {"eta": 0.0}))])
def test_special_cases_coincide_pathwise(a: str | tuple[str, dict], b: tuple[str, dict]) -> None:
    """DDPM is ancestral Euler at eta=1; DDIM at eta=0 is Euler; the 2M SDE without noise is
    2M; DPM2 ancestral without noise is DPM2; DPM++ SDE and 2S ancestral without noise are both
    DPM-Solver++(2S). Same start, same noise draws, same samples."""
    a, a_knobs = (a, {}) if isinstance(a, str) else a
    x = torch.randn(6, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 30
    sigmas = karras_sigmas(12, SIGMA_MIN, 30.0)
    out_a = SAMPLERS[a](scalar_denoiser, x, sigmas, generator=torch.Generator().manual_seed(3),
                        **a_knobs)
    out_b = SAMPLERS[b[0]](scalar_denoiser, x, sigmas, generator=torch.Generator().manual_seed(3),
                           **b[1])
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=1e-9)


# -- the contract every sampler shares --------------------------------------------------------

class CountingDenoiser:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra) -> torch.Tensor:
        self.calls += 1
        assert sigma.shape == (x.shape[0],) and extra == {"flag": 1}
        return scalar_denoiser(x, sigma)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_network_evaluations_and_extra_args(name: str) -> None:
    spec = SAMPLERS[name]
    seen: list[dict] = []
    model = CountingDenoiser()
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)) * 10
    out = spec(model, x, karras_sigmas(7, 0.01, 10.0), extra_args={"flag": 1},
               callback=seen.append, generator=torch.Generator().manual_seed(0))
    assert [d["i"] for d in seen] == list(range(7))
    assert set(seen[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}
    assert torch.equal(seen[-1]["x"], out) and out.dtype == x.dtype
    assert model.calls == spec.evals(7) == (13 if spec.evals_per_step == 2 else 7)
    assert spec.steps_for(spec.evals(7)) == 7


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_a_seed_fixes_every_sample_and_only_stochastic_samplers_use_it(name: str) -> None:
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 10
    sigmas = karras_sigmas(6, 0.01, 10.0)
    runs = [SAMPLERS[name](scalar_denoiser, x, sigmas, generator=torch.Generator().manual_seed(s))
            for s in (5, 5, 6)]
    assert torch.equal(runs[0], runs[1])
    stochastic = name in STOCHASTIC
    assert torch.equal(runs[0], runs[2]) is not stochastic


def test_sigmas_must_descend() -> None:
    with pytest.raises(ValueError, match="descend"):
        SAMPLERS["euler"](scalar_denoiser, torch.zeros(1, 1), torch.tensor([1.0, 2.0, 0.0]))


# -- knobs --------------------------------------------------------------------------------------

def test_knobs_come_from_the_signature_and_bad_ones_list_the_valid_ones() -> None:
    assert SAMPLERS["dpmpp_2m_sde"].knobs == {"eta": 1.0, "s_noise": 1.0}
    assert SAMPLERS["ddim"].check_knobs({"eta": "0.25"}) == {"eta": 0.25}
    with pytest.raises(ConfigError, match=r"'euler' has no knob 'eta'; it takes no knobs"):
        SAMPLERS["euler"].check_knobs({"eta": 0.5})
    with pytest.raises(ConfigError, match=r"out of range \(\[0, 1\]\).*eta \(default 0.0, in \[0, 1\]\)"):
        SAMPLERS["ddim"].check_knobs({"eta": 1.5})
    with pytest.raises(ConfigError, match=r"s_nois.*did you mean 's_noise'"):
        SAMPLERS["euler_ancestral"].check_knobs({"s_nois": 1.0})
    with pytest.raises(ConfigError, match="not a float"):
        SAMPLERS["ddim"].check_knobs({"eta": "lots"})


# -- noise levels -------------------------------------------------------------------------------

def test_karras_sigmas_follow_eq_5() -> None:
    sig = karras_sigmas(5, 0.1, 10.0, rho=7.0)
    lo, hi = 0.1 ** (1 / 7), 10.0 ** (1 / 7)
    expected = [(hi + i / 4 * (lo - hi)) ** 7 for i in range(5)] + [0.0]
    torch.testing.assert_close(sig, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    # rho = 1 is uniform in sigma
    torch.testing.assert_close(karras_sigmas(3, 1.0, 3.0, rho=1.0),
                               torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=torch.float64))


def test_exponential_sigmas_have_a_constant_log_step() -> None:
    sig = exponential_sigmas(6, 0.01, 100.0)
    steps = (sig[:-2] / sig[1:-1]).log()
    torch.testing.assert_close(steps, torch.full_like(steps, math.log(1e4) / 5))
    assert sig[0].item() == pytest.approx(100.0) and sig[-2].item() == pytest.approx(0.01)
    assert sig[-1].item() == 0.0


def test_discrete_sigmas_are_the_schedule_at_the_ddim_timesteps() -> None:
    schedule = NoiseSchedule.build("scaled_linear", 1000)
    sig = discrete_sigmas(schedule, 10, "trailing")
    ts = make_timesteps(1000, 10, "trailing")
    abar = schedule.alphas_cumprod[ts]
    torch.testing.assert_close(sig[:-1], ((1 - abar) / abar).sqrt())
    assert sig[-1].item() == 0.0
    plan = SigmaPlan(SigmaKind.KARRAS)
    karras = plan.sigmas(schedule, 4)
    assert karras[0].item() == pytest.approx(schedule.sigmas[-1].item())
    assert karras[-2].item() == pytest.approx(schedule.sigmas[0].item())


# -- the discrete-schedule adapter -------------------------------------------------------------

SCHEDULE = NoiseSchedule.build("linear", 1000, 1e-4, 0.02)


def vp_networks(prediction: Prediction):
    """The exact denoiser of N(MU1, S1^2) as the network a perfect UNet would be."""

    def network(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = SCHEDULE.abar(t.long(), z)
        z0 = MU1 + a.sqrt() * S1 ** 2 * (z - a.sqrt() * MU1) / (a * S1 ** 2 + 1 - a)
        eps = (z - a.sqrt() * z0) / (1 - a).sqrt()
        return eps if prediction is Prediction.EPS else a.sqrt() * eps - (1 - a).sqrt() * z0

    return network


@pytest.mark.parametrize("prediction", list(Prediction))
def test_adapter_turns_eps_and_v_networks_into_the_exact_denoiser(prediction: Prediction) -> None:
    model = DiscreteDenoiser(vp_networks(prediction), SCHEDULE, prediction)
    ts = torch.tensor([0, 3, 250, 600, 999])
    sigma = SCHEDULE.sigmas[ts]
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    torch.testing.assert_close(model(x, sigma), scalar_denoiser(x, sigma), rtol=0, atol=1e-10)


def test_sigma_to_t_is_exact_on_the_table_and_log_linear_between() -> None:
    model = DiscreteDenoiser(vp_networks(Prediction.EPS), SCHEDULE)
    ts = torch.tensor([0, 1, 17, 500, 998, 999])
    assert torch.equal(model.sigma_to_t(SCHEDULE.sigmas[ts]), ts.double())
    assert torch.equal(model.sigma_to_t(SCHEDULE.sigmas[ts].float()), ts.double())  # float32 too
    s = SCHEDULE.sigmas
    midpoint = (s[41] * s[42]).sqrt()[None]
    assert model.sigma_to_t(midpoint).item() == pytest.approx(41.5, abs=1e-9)
    t = torch.tensor([0.0, 3.25, 640.5, 999.0], dtype=torch.float64)
    torch.testing.assert_close(model.sigma_to_t(model.t_to_sigma(t)), t)
    # outside the table the timestep is clamped to its ends
    assert model.sigma_to_t(torch.tensor([1e-9, 1e9])).tolist() == [0.0, 999.0]


def test_zero_terminal_snr_v_prediction_samples_from_pure_noise() -> None:
    """Lin et al. 2023: with abar_T = 0 the first step sees pure noise; a v-model still knows
    what to do there (D = -v = E[x0]), and DDIM from t = T ("trailing") has no mean bias,
    while leading spacing, which never visits t = T, does."""
    ztsnr = NoiseSchedule.build("linear", 1000, 1e-4, 0.02, zero_terminal_snr=True)

    def v_network(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = ztsnr.abar(t.long(), z)
        z0 = MU1 + a.sqrt() * S1 ** 2 * (z - a.sqrt() * MU1) / (a * S1 ** 2 + 1 - a)
        eps = (z - a.sqrt() * z0) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * z0

    model = DiscreteDenoiser(v_network, ztsnr, Prediction.V)
    x = torch.randn(20, 1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = (x - x.mean()) / x.std()  # exact N(0, 1) moments: DDIM is affine, so no MC error

    def errors(steps: int, spacing: str) -> tuple[float, float]:
        sigmas = discrete_sigmas(ztsnr, steps, spacing)
        assert math.isfinite(sigmas[0].item())
        out = SAMPLERS["ddim"](model, x * model.initial_noise_scale(sigmas[0].item()), sigmas)
        return abs(out.mean().item() - MU1), abs(out.std().item() - S1)

    (mean10, std10), (mean100, std100) = errors(10, "trailing"), errors(100, "trailing")
    assert mean10 < 1e-4 and mean100 < 1e-4
    assert errors(10, "leading")[0] > 30 * mean10
    assert 5 < std10 / std100 < 20 and std100 < 0.02  # DDIM's first order


# -- samplers from plugins ----------------------------------------------------------------------

def sample_kd_style(model, x, sigmas, extra_args=None, callback=None, disable=None,
                    noise_sampler=None, eta=1.0):
    """A third-party sampler written for k-diffusion: draws noise from ``noise_sampler``."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        down, up = ancestral_step(sigmas[i].item(), sigmas[i + 1].item(), eta)
        x = denoised + down / sigmas[i] * (x - denoised)
        if up:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * up
    return x


def test_a_k_diffusion_style_sampler_registers_through_the_hook_and_runs_seeded() -> None:
    class KdSamplers:
        @hookimpl
        def register_samplers(self, register):
            register(sample_kd_style)

    plugin = KdSamplers()
    reg = build_registry(load_entry_points=False)
    assert set(SAMPLERS) <= set(reg.samplers)  # built-ins come through the same hook
    reg.add_module(plugin, package="kd-samplers")
    spec = reg.sampler("kd_style")
    assert isinstance(spec, SamplerSpec) and spec.package == "kd-samplers"
    assert spec.knobs == {"eta": 1.0}
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 10
    sig = karras_sigmas(5, 0.01, 10.0)
    runs = [spec(scalar_denoiser, x, sig, generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    # it is ancestral Euler: same noise draws, same samples
    ours = SAMPLERS["euler_ancestral"](scalar_denoiser, x, sig, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(runs[0], ours, rtol=0, atol=1e-9)
    with pytest.raises(ConfigError, match="unknown sampler 'kd_styl'.*'kd_style'.*Samplers: ddim"):
        reg.sampler("kd_styl")


def test_two_packages_registering_one_sampler_name_clash() -> None:
    reg = build_registry(load_entry_points=False)
    class Clash:
        @hookimpl
        def register_samplers(self, register):
            register(sample_kd_style, name="euler")

    clash = Clash()
    with pytest.raises(PluginClash, match="'euler'.*'ldmcore'.*'other'"):
        reg.add_module(clash, package="other")
