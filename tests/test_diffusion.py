"""Noise schedules, prediction conversions and DDIM/DDPM against closed-form truths.

DDIM and DDPM are checked on Gaussian data, z0 ~ N(MU, S^2) per dimension, where the exact
denoiser E[z0 | z_t] is closed form; every sampler step is then affine in z_t (plus Gaussian
noise), so the output distribution of DDIM and DDPM is known exactly for any step count. The
exact denoiser is written as an eps-network over integer timesteps and reaches the samplers
through ``DiscreteDenoiser``, as a trained UNet does. (Every sampler's convergence order is in
test_samplers.py, guidance in test_guidance.py.)
"""

from __future__ import annotations

import math

import pytest
import torch

from ldmcore.diffusion.denoisers import DiscreteDenoiser
from ldmcore.diffusion.samplers import SAMPLERS
from ldmcore.diffusion.schedule import (BetaSchedule, NoiseSchedule, Prediction, make_betas,
                                        rescale_zero_terminal_snr)
from ldmcore.diffusion.sigmas import Spacing, discrete_sigmas, make_timesteps



# ------------------------------------------------------------------------------------------
# schedules
# ------------------------------------------------------------------------------------------


def test_linear_betas_are_evenly_spaced_between_the_endpoints() -> None:
    start, end, steps = 1e-4, 0.02, 1000
    betas = make_betas(BetaSchedule.LINEAR, steps, start, end)
    assert betas.dtype == torch.float64 and betas.shape == (steps,)
    expected = torch.tensor([start + k * (end - start) / (steps - 1) for k in range(steps)],
                            dtype=torch.float64)
    torch.testing.assert_close(betas, expected, rtol=0, atol=1e-15)
    assert betas[0].item() == pytest.approx(start, abs=1e-18)
    assert betas[-1].item() == pytest.approx(end, abs=1e-18)


def test_scaled_linear_betas_have_evenly_spaced_square_roots() -> None:
    start, end, steps = 0.00085, 0.012, 1000
    betas = make_betas(BetaSchedule.SCALED_LINEAR, steps, start, end)
    rs, re = math.sqrt(start), math.sqrt(end)
    expected = torch.tensor([(rs + k * (re - rs) / (steps - 1)) ** 2 for k in range(steps)],
                            dtype=torch.float64)
    torch.testing.assert_close(betas, expected, rtol=1e-12, atol=0)
    # midpoint of sqrt-space is the mean of the endpoint roots (odd count: an exact sample)
    mid = make_betas(BetaSchedule.SCALED_LINEAR, 1001, start, end)[500].item()
    assert mid == pytest.approx(((rs + re) / 2) ** 2, rel=1e-12)


def test_stable_diffusion_schedule_final_signal_level() -> None:
    # Lin et al. 2023 ("Common diffusion noise schedules are flawed") report that SD's
    # scaled_linear 0.00085..0.012 schedule ends at sqrt(abar_T) = 0.068265.
    schedule = NoiseSchedule.build("scaled_linear", 1000, 0.00085, 0.012)
    assert schedule.alphas_cumprod[-1].sqrt().item() == pytest.approx(0.068265, abs=2e-6)


def test_cosine_alphas_cumprod_follow_the_closed_form() -> None:
    steps, s = 1000, 0.008
    betas = make_betas(BetaSchedule.COSINE, steps, cosine_s=s)
    abar = NoiseSchedule(betas).alphas_cumprod

    def f(t: float) -> float:
        return math.cos((t / steps + s) / (1 + s) * math.pi / 2) ** 2

    expected = torch.tensor([f(t) / f(0) for t in range(1, steps + 1)], dtype=torch.float64)
    unclipped = betas < 0.999
    # the clip only bites at the very end of the schedule, where abar ~ 0
    assert unclipped[: steps - 5].all() and not unclipped.all()
    first_clip = int((~unclipped).nonzero()[0])
    torch.testing.assert_close(abar[:first_clip], expected[:first_clip], rtol=1e-10, atol=1e-13)
    assert betas.max().item() == pytest.approx(0.999)
    # Nichol & Dhariwal's point: abar is close to linear through the middle of the schedule
    assert abar[steps // 2 - 1].item() == pytest.approx(f(steps / 2) / f(0), rel=1e-12)
    assert 0.45 < abar[steps // 2 - 1].item() < 0.55


def test_sigmas_give_the_variance_exploding_view_of_the_same_point() -> None:
    schedule = NoiseSchedule.build("scaled_linear", 1000)
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    zt = schedule.add_noise(z0, eps, t)
    a = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    sigma = schedule.sigmas[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(zt / a.sqrt(), z0 + sigma * eps, rtol=1e-12, atol=1e-12)


SCHEDULES = [("linear", 1e-4, 0.02), ("scaled_linear", 0.00085, 0.012)]


@pytest.mark.parametrize("kind,start,end", [*SCHEDULES, ("cosine", 0.0, 0.0)])
def test_zero_terminal_snr_rescale_follows_lin_et_al_algorithm_1(kind: str, start: float,
                                                                  end: float) -> None:
    """sqrt(abar) is shifted to end at exactly 0 and scaled to keep its first value."""
    betas = make_betas(kind, 1000, start or 1e-4, end or 0.02)
    root = torch.cumprod(1 - betas, 0).sqrt()
    rescaled = NoiseSchedule(rescale_zero_terminal_snr(betas))
    expected = (root - root[-1]) * root[0] / (root[0] - root[-1])
    torch.testing.assert_close(rescaled.alphas_cumprod.sqrt(), expected, rtol=1e-9, atol=1e-12)
    assert rescaled.alphas_cumprod[-1].item() == 0.0 and rescaled.betas[-1].item() == 1.0
    assert rescaled.zero_terminal_snr and not NoiseSchedule(betas).zero_terminal_snr
    assert ((rescaled.betas > 0) & (rescaled.betas <= 1)).all()
    # the sigma view stays finite and increasing: the last sigma continues the log slope
    sig = rescaled.sigmas
    assert torch.isfinite(sig).all() and (sig[1:] > sig[:-1]).all()
    assert sig[-1].log().item() - sig[-2].log().item() == pytest.approx(
        sig[-2].log().item() - sig[-3].log().item(), rel=1e-9)


def test_v_prediction_round_trips_at_zero_terminal_snr() -> None:
    schedule = NoiseSchedule.build("scaled_linear", 1000, zero_terminal_snr=True)
    g = torch.Generator().manual_seed(5)
    z0 = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 500, 999])
    zt = schedule.add_noise(z0, eps, t)
    assert torch.equal(zt[2], eps[2])  # pure noise at t = T
    v = schedule.target(Prediction.V, z0, eps, t)
    torch.testing.assert_close(v[2], -z0[2])
    eps_hat, z0_hat = schedule.to_eps_x0(Prediction.V, v, zt, t)
    torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-9)
    torch.testing.assert_close(z0_hat, z0, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind,start,end", SCHEDULES)
@pytest.mark.parametrize("prediction", list(Prediction))
def test_add_noise_then_to_eps_x0_recovers_the_clean_latent_and_noise(
        kind: str, start: float, end: float, prediction: Prediction) -> None:
    schedule = NoiseSchedule.build(kind, 1000, start, end)
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(8, 4, 5, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(8, 4, 5, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 100, 400, 700, 998, 999])
    zt = schedule.add_noise(z0, eps, t)
    # a perfect network outputs the training target; converting it back must be exact
    target = schedule.target(prediction, z0, eps, t)
    eps_hat, z0_hat = schedule.to_eps_x0(prediction, target, zt, t)
    torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-9)
    torch.testing.assert_close(z0_hat, z0, rtol=0, atol=1e-9)


def test_v_target_is_salimans_ho_velocity() -> None:
    schedule = NoiseSchedule.build("scaled_linear", 1000)
    g = torch.Generator().manual_seed(2)
    z0 = torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 3, 333, 666, 999])
    v = schedule.target(Prediction.V, z0, eps, t)
    for i, ti in enumerate(t.tolist()):
        a = float(schedule.alphas_cumprod[ti])
        torch.testing.assert_close(v[i], math.sqrt(a) * eps[i] - math.sqrt(1 - a) * z0[i],
                                   rtol=0, atol=1e-13)
    assert torch.equal(schedule.target(Prediction.EPS, z0, eps, t), eps)
    # v is a rotation of (z0, eps): it preserves the per-element sum of squares
    zt = schedule.add_noise(z0, eps, t)
    torch.testing.assert_close(zt ** 2 + v ** 2, z0 ** 2 + eps ** 2, rtol=1e-12, atol=1e-12)


def test_eps_and_v_conversions_agree_on_arbitrary_outputs() -> None:
    """An eps output and the v output describing the same (eps, z0) decode identically."""
    schedule = NoiseSchedule.build("linear", 1000, 1e-4, 0.02)
    g = torch.Generator().manual_seed(3)
    zt = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    out = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)  # not a true eps
    t = torch.tensor([5, 50, 500, 950])
    eps, z0 = schedule.to_eps_x0(Prediction.EPS, out, zt, t)
    a = schedule.abar(t, zt)
    torch.testing.assert_close(a.sqrt() * z0 + (1 - a).sqrt() * eps, zt)  # consistent pair
    v = a.sqrt() * eps - (1 - a).sqrt() * z0
    eps_v, z0_v = schedule.to_eps_x0(Prediction.V, v, zt, t)
    torch.testing.assert_close(eps_v, eps, rtol=0, atol=1e-10)
    torch.testing.assert_close(z0_v, z0, rtol=0, atol=1e-10)


def test_abar_broadcasts_per_sample_in_the_input_dtype() -> None:
    schedule = NoiseSchedule.build("linear", 10, 0.1, 0.2)
    like = torch.zeros(3, 2, 4, 4, dtype=torch.float32)
    a = schedule.abar(torch.tensor([0, 4, 9]), like)
    assert a.shape == (3, 1, 1, 1) and a.dtype == torch.float32
    expected = [math.prod(1 - (0.1 + k * 0.1 / 9) for k in range(t + 1)) for t in (0, 4, 9)]
    torch.testing.assert_close(a.flatten(), torch.tensor(expected, dtype=torch.float32))


def test_min_snr_weights_follow_hang_et_al() -> None:
    """eps: min(SNR, g) / SNR; v: min(SNR, g) / (SNR + 1); SNR = abar / (1 - abar), by hand."""
    schedule = NoiseSchedule.build("linear", 10, 0.1, 0.2)
    t = torch.tensor([0, 4, 9])
    abar = [math.prod(1 - (0.1 + k * 0.1 / 9) for k in range(i + 1)) for i in (0, 4, 9)]
    snr = [a / (1 - a) for a in abar]  # 9.0, 0.88.., 0.15..: one above gamma = 2, two below
    eps = schedule.min_snr_weight(t, Prediction.EPS, 2.0)
    v = schedule.min_snr_weight(t, Prediction.V, 2.0)
    torch.testing.assert_close(eps, torch.tensor([min(r, 2.0) / r for r in snr]))
    torch.testing.assert_close(v, torch.tensor([min(r, 2.0) / (r + 1) for r in snr]))
    zero = NoiseSchedule.build("scaled_linear", 1000, zero_terminal_snr=True)
    assert float(zero.min_snr_weight(torch.tensor([999]), Prediction.EPS, 5.0)) == 1.0  # the limit


def test_min_snr_loss_is_the_weighted_per_sample_mse() -> None:
    """A gamma above every SNR weighs eps losses by 1 (the uniform loss); a small gamma
    re-weighs each sample's MSE by its own weight."""
    from ldmcore.build import build_model
    from ldmcore.config import load

    torch.manual_seed(0)
    model = build_model(load(["experiment=smoke"]))
    batch = {"class": torch.tensor([1, 2, 3, 4])}
    latents = torch.randn(4, *model.latent_shape())

    @torch.no_grad()
    def loss(gamma):
        model.snr_gamma = gamma
        return model.loss(batch, latents, generator=torch.Generator().manual_seed(3))

    torch.testing.assert_close(loss(1e12), loss(None))
    rng = torch.Generator().manual_seed(3)  # the loss draws t first: the same t here
    t = torch.randint(0, model.schedule.num_timesteps, (4,), generator=rng)
    weight = model.schedule.min_snr_weight(t, model.prediction, 0.05)
    assert not torch.allclose(weight, torch.ones(4))
    assert float(loss(0.05)) < float(loss(None))  # every weight is at most 1


# ------------------------------------------------------------------------------------------
# timesteps
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_train,steps", [(1000, 1), (1000, 7), (1000, 50), (1000, 1000),
                                             (10, 3), (10, 10)])
@pytest.mark.parametrize("spacing", list(Spacing))
def test_timesteps_are_distinct_descending_and_in_range(num_train: int, steps: int,
                                                         spacing: Spacing) -> None:
    ts = make_timesteps(num_train, steps, spacing)
    assert ts.dtype == torch.long and ts.shape == (steps,)
    assert (ts[:-1] > ts[1:]).all(), ts.tolist()
    assert 0 <= ts.min() and ts.max() <= num_train - 1
    if steps == num_train:
        assert ts.tolist() == list(range(num_train - 1, -1, -1))


def test_leading_spacing_is_multiples_of_the_stride_plus_offset() -> None:
    assert make_timesteps(1000, 10, "leading").tolist() == list(range(900, -1, -100))
    # SD's steps_offset=1 with 50 steps: 981, 961, ..., 1
    assert make_timesteps(1000, 50, "leading", offset=1).tolist() == list(range(981, 0, -20))


def test_linspace_spacing_includes_both_ends() -> None:
    assert make_timesteps(1000, 5, "linspace").tolist() == [999, 749, 500, 250, 0]
    ts = make_timesteps(1000, 13, "linspace")
    expected = [round(k * 999 / 12) for k in range(12, -1, -1)]
    assert ts.tolist() == expected


def test_trailing_spacing_counts_back_from_the_last_timestep() -> None:
    # Lin et al. 2023: trailing with 1000 train steps and 10 sampling steps is 999, 899, ..., 99
    assert make_timesteps(1000, 10, "trailing").tolist() == list(range(999, 0, -100))
    assert make_timesteps(1000, 3, "trailing").tolist() == [999, 666, 332]


@pytest.mark.parametrize("steps", [0, 1001])
def test_timestep_count_out_of_range_is_an_error(steps: int) -> None:
    with pytest.raises(ValueError, match="steps must be in 1..1000"):
        make_timesteps(1000, steps)


# ------------------------------------------------------------------------------------------
# samplers on Gaussian data with the exact denoiser
# ------------------------------------------------------------------------------------------

MU, S = 1.5, 0.5
N = 20000
# samples as a (batch, dim) array: 20 chains of 1000 independent coordinates each, so the
# per-sample timestep and abar stay short while the statistics use all N scalars
SHAPE = (20, N // 20)
# linear 1e-4..0.02 over 1000 steps ends at abar_T ~ 4e-5, so z_T is N(0, 1) to within 1e-4
GAUSS = NoiseSchedule.build("linear", 1000, 1e-4, 0.02)


def exact_denoise(z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E[z0 | z_t] for z0 ~ N(MU, S^2) and the matching eps."""
    a = GAUSS.abar(t, z)
    z0 = MU + a.sqrt() * S ** 2 * (z - a.sqrt() * MU) / (a * S ** 2 + 1 - a)
    return (z - a.sqrt() * z0) / (1 - a).sqrt(), z0


def exact_eps(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact denoiser as an eps-prediction network (what a perfect UNet outputs)."""
    return exact_denoise(z, t)[0]


def sample_vp(name: str, x: torch.Tensor, steps: int, spacing: str, **knobs) -> torch.Tensor:
    """Run a sampler from VP noise ``x`` (z_T) over the DDIM/DDPM timesteps, the way
    ``LatentDiffusion.sample`` does: adapter, discrete sigmas, start scaled to the sigma view."""
    model = DiscreteDenoiser(exact_eps, GAUSS, Prediction.EPS)
    sigmas = discrete_sigmas(GAUSS, steps, spacing)
    start = x * DiscreteDenoiser.initial_noise_scale(float(sigmas[0]))
    return SAMPLERS[name](model, start, sigmas, **knobs)


def _abar(t: int) -> float:
    return 1.0 if t < 0 else float(GAUSS.alphas_cumprod[t])


def _visits(steps: int, spacing: str) -> list[tuple[int, int]]:
    ts = make_timesteps(GAUSS.num_timesteps, steps, spacing).tolist()
    return list(zip(ts, ts[1:] + [-1]))


def ddim_closed_form(x: torch.Tensor, steps: int, spacing: str) -> torch.Tensor:
    """DDIM(eta=0) on this data, derived geometrically rather than by running its update.

    Write (sqrt(a) S, sqrt(1-a)) = r_a (cos phi_a, sin phi_a). With u = (z - sqrt(a) MU) / r_a,
    one DDIM step from a to a' maps u to u * cos(phi_a - phi_a'); at a' = 1, r = S, phi = 0.
    """
    visits = _visits(steps, spacing)
    a_start = _abar(visits[0][0])
    u = (x - math.sqrt(a_start) * MU) / math.sqrt(a_start * S ** 2 + 1 - a_start)
    for t, t_prev in visits:
        phi = math.atan2(math.sqrt(1 - _abar(t)), math.sqrt(_abar(t)) * S)
        phi_prev = math.atan2(math.sqrt(1 - _abar(t_prev)), math.sqrt(_abar(t_prev)) * S)
        u = u * math.cos(phi - phi_prev)
    return MU + S * u


def ddpm_moments(steps: int, spacing: str, mean: float = 0.0, var: float = 1.0
                 ) -> tuple[float, float]:
    """Exact output mean and std of ancestral sampling from N(mean, var) on this data.

    Each step is x' = c0 * E[z0|x] + cx * x + sqrt(beta~) n with E[z0|x] = MU + k (x - sqrt(a) MU).
    """
    for t, t_prev in _visits(steps, spacing):
        a, ap = _abar(t), _abar(t_prev)
        beta = 1 - a / ap
        c0, cx = math.sqrt(ap) * beta / (1 - a), math.sqrt(1 - beta) * (1 - ap) / (1 - a)
        k = math.sqrt(a) * S ** 2 / (a * S ** 2 + 1 - a)
        slope = c0 * k + cx
        mean = slope * mean + c0 * (MU - k * math.sqrt(a) * MU)
        var = slope ** 2 * var + (beta * (1 - ap) / (1 - a) if t_prev >= 0 else 0.0)
    return mean, math.sqrt(var)


def _standard_normal(seed: int) -> torch.Tensor:
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (x - x.mean()) / x.std()  # exact N(0, 1) moments: DDIM is affine, so no MC error


@pytest.mark.parametrize("spacing", list(Spacing))
@pytest.mark.parametrize("steps", [1, 4, 25, 200])
def test_ddim_matches_its_closed_form_map_on_gaussian_data(spacing: Spacing, steps: int) -> None:
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.3
    out = sample_vp("ddim", x, steps, spacing)
    torch.testing.assert_close(out, ddim_closed_form(x, steps, spacing), rtol=0, atol=1e-10)


def test_ddim_output_distribution_converges_to_the_data_as_steps_grow() -> None:
    x = _standard_normal(0)
    errors = []
    for steps in (2, 5, 20, 100, 1000):
        out = sample_vp("ddim", x, steps, "trailing")
        mean_err, std_err = abs(out.mean().item() - MU), abs(out.std().item() - S)
        errors.append(mean_err + std_err)
    assert all(e1 > e2 for e1, e2 in zip(errors, errors[1:])), errors
    assert errors[0] > 0.3  # two steps collapse most of the variance
    # the full chain reproduces N(MU, S^2); the mean keeps the start's offset from the true
    # marginal at T, N(sqrt(abar_T) MU, ~1), which maps to -sqrt(abar_T) MU S = -0.0048
    assert std_err < 2e-3
    assert mean_err < 1.1 * math.sqrt(_abar(999)) * MU * S


def test_ddpm_output_distribution_matches_its_exact_moments() -> None:
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    errors = []
    for steps in (5, 50, 1000):
        gen = torch.Generator().manual_seed(steps)
        out = sample_vp("ddpm", x, steps, "trailing", generator=gen)
        mean, std = ddpm_moments(steps, "trailing")
        se_mean, se_std = std / math.sqrt(N), std / math.sqrt(2 * N)
        assert abs(out.mean().item() - mean) < 5 * se_mean, (steps, out.mean().item(), mean)
        assert abs(out.std().item() - std) < 5 * se_std, (steps, out.std().item(), std)
        errors.append(abs(mean - MU) + abs(std - S))
    assert errors[0] > errors[1] > errors[2]
    # ancestral steps drop Var[z0 | z_t], so even the full chain is a little narrow
    assert errors[-1] < 5e-3


def test_ddim_with_eta_one_is_ddpm_pathwise() -> None:
    """Song et al. 2021: eta=1 makes DDIM's sigma the DDPM posterior std; with the same noise
    draws the two chains coincide sample by sample."""
    x = torch.randn(20, 100, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for steps, spacing in ((10, "leading"), (37, "trailing")):
        ddim = sample_vp("ddim", x, steps, spacing, eta=1.0,
                         generator=torch.Generator().manual_seed(9))
        ddpm = sample_vp("ddpm", x, steps, spacing, generator=torch.Generator().manual_seed(9))
        torch.testing.assert_close(ddim, ddpm, rtol=0, atol=1e-9)
    mean, std = ddpm_moments(37, "trailing")
    assert abs(ddim.mean().item() - mean) < 5 * std / math.sqrt(2000)


def _tensor_eps(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact eps-network on float32 image-shaped latents."""
    return exact_eps(z.double(), t).to(z.dtype)


def _tensor_sample(name: str, x: torch.Tensor, steps: int, seed: int, **knobs) -> torch.Tensor:
    model = DiscreteDenoiser(_tensor_eps, GAUSS, Prediction.EPS)
    sigmas = discrete_sigmas(GAUSS, steps)
    return SAMPLERS[name](model, x * DiscreteDenoiser.initial_noise_scale(float(sigmas[0])), sigmas,
                          generator=torch.Generator().manual_seed(seed), **knobs)


@pytest.mark.parametrize("name,knobs", [("ddpm", {}), ("ddim", {"eta": 0.5})])
def test_stochastic_samplers_are_fixed_by_the_generator_seed(name: str, knobs: dict) -> None:
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    runs = [_tensor_sample(name, x, 8, s, **knobs) for s in (5, 5, 6)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])


def test_ddim_eta_zero_is_deterministic_and_draws_no_noise() -> None:
    x = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_tensor_sample("ddim", x, 6, 1), _tensor_sample("ddim", x, 6, 2))
