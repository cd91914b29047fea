"""Each fast path stays within its stated tolerance of the float32 reference (diffusers' output on
the same weights): channels_last and in-place adds keep float32 parity (1e-4), bf16 weights and
bf16 autocast stay within BF16_TOL of it, the GroupNorm detour is bit-identical, a failing
torch.compile falls back to eager, on the performance anchor of ``python -m benchmarks.perf`` at
CI size. Timings live in that benchmark, never here."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from benchmarks.support import anchor
from ldmcore.config import load
from ldmcore.conditioning import Conditioning
from ldmcore.diffusion.denoisers import DiscreteDenoiser
from ldmcore.diffusion.guidance import Guidance, GuidedDenoiser
from ldmcore.diffusion.samplers import sample_dpmpp_2m
from ldmcore.diffusion.schedule import NoiseSchedule
from ldmcore.diffusion.sigmas import SigmaPlan
from ldmcore.errors import ConfigError
from ldmcore.nn import execution
from ldmcore.nn.norms import SMALL_MAP, GroupNorm, LayerNorm, affine_for

PARITY = 1e-4  # float32 fast paths: the interop parity tolerance
BF16_TOL = 0.05  # bf16 paths: max abs difference over max abs value of the float32 reference
WIDTHS = (32, 64, 64)  # the anchor's SD-1.x layout at CI size
VAE_WIDTHS = (32, 64)


@pytest.fixture(scope="module")
def pair():
    return anchor.build(unet_widths=WIDTHS, vae_widths=VAE_WIDTHS)


def inputs(batch: int = 2):
    x, t, ctx = anchor.inputs(batch)
    return x[..., :16, :16].contiguous(), t, ctx


def relative(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).abs().max() / ref.abs().max())


@torch.inference_mode()
def test_channels_last_keeps_float32_parity_with_diffusers(pair):
    x, t, ctx = inputs()
    ref = pair.diffusers_unet(x, t, encoder_hidden_states=ctx).sample
    fast = execution.for_inference(copy.deepcopy(pair.unet), channels_last=True)
    out = fast(x, t, ctx)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out - ref).abs().max() < PARITY


@torch.inference_mode()
def test_bf16_weights_stay_within_tolerance_and_keep_norms_float32(pair):
    x, t, ctx = inputs()
    ref = pair.diffusers_unet(x, t, encoder_hidden_states=ctx).sample
    fast = execution.for_inference(copy.deepcopy(pair.unet), bf16_weights=True)
    assert fast.input_blocks[0][0].weight.dtype == torch.bfloat16
    norms = [m for m in fast.modules() if isinstance(m, execution.NORMS)]
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)
    out = fast(x, t, ctx)
    assert out.dtype == torch.bfloat16
    assert 0 < relative(out, ref) < BF16_TOL  # bf16 is not float32, and close to it


@torch.inference_mode()
def test_bf16_vae_decode_within_tolerance(pair):
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = pair.diffusers_vae.decode(z).sample
    fast = execution.for_inference(copy.deepcopy(pair.vae), bf16_weights=True)
    assert (fast.decode(z).float() - pair.vae.decode(z)).abs().max() > 0
    assert relative(fast.decode(z), ref) < BF16_TOL
    assert fast.images(z).dtype == torch.float32


def test_autocast_channels_last_training_matches_float32_loss_and_gradients(pair):
    x, t, ctx = inputs()
    noise = torch.randn_like(x)

    def loss_and_grad(net, bf16: bool):
        net = execution.for_training(copy.deepcopy(net), channels_last=bf16).train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.mse_loss(net(x, t, ctx).float(), noise)
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in net.parameters()])

    ref_loss, ref_grad = loss_and_grad(pair.unet, False)
    loss, grad = loss_and_grad(pair.unet, True)
    assert abs(float(loss - ref_loss)) < BF16_TOL * float(ref_loss)
    cosine = F.cosine_similarity(grad, ref_grad, dim=0)
    assert cosine > 0.99  # bf16 gradients point where the float32 ones do


def test_attention_core_is_float32_only_when_gradients_flow():
    q = torch.randn(1, 2, 64, 8, dtype=torch.bfloat16)
    with torch.no_grad():
        fast = execution_attention(q)
    exact = F.scaled_dot_product_attention(q.float(), q.float(), q.float())
    assert (fast.float() - exact).abs().max() < 0.02
    grads = execution_attention(q.clone().requires_grad_())
    assert (grads.float() - exact).abs().max() <= (fast.float() - exact).abs().max()


def execution_attention(q: torch.Tensor) -> torch.Tensor:
    from ldmcore.nn.attention import attention

    return attention(q, q, q)


@pytest.mark.parametrize("shape", [(2, 64, 16, 16), (2, 64, 4, 4), (1, 32, 32, 32)])
def test_groupnorm_detour_is_bit_identical(shape):
    gn = GroupNorm(32, shape[1])
    torch.nn.init.normal_(gn.weight)
    torch.nn.init.normal_(gn.bias)
    x = (torch.randn(shape) * 3 + 1).bfloat16().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = gn(x)
        small = shape[-1] * shape[-2] <= SMALL_MAP  # detour: PyTorch's NCHW kernel, else its NHWC one
        native = F.group_norm(x.contiguous() if small else x, 32, gn.weight, gn.bias, gn.eps)
        exact = F.group_norm(x.float(), 32, gn.weight, gn.bias, gn.eps)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, native.contiguous(memory_format=torch.channels_last))
    assert (out.float() - exact).abs().max() < 0.05  # one bf16 rounding of values up to ~4


@pytest.mark.parametrize("norm", [GroupNorm(4, 8), LayerNorm(8)])
def test_norms_cast_float32_affine_to_bf16_activations_off_the_cpu(norm):
    """CUDA's norm kernels take one dtype for input and affine, while bf16 weights keep float32
    norms. The meta device stands in for CUDA here (CI has no GPU)."""
    x = torch.randn(2, 8, 4, 8).bfloat16()
    assert norm(x).dtype == torch.bfloat16  # CPU kernels take the mixed pair as is
    assert all(t.dtype == torch.float32 for t in affine_for(norm, x))
    meta = copy.deepcopy(norm).to("meta")
    assert all(t.dtype == torch.bfloat16 for t in affine_for(meta, x.to("meta")))
    assert meta(x.to("meta")).dtype == torch.bfloat16 and meta.weight.dtype == torch.float32


def test_failing_compile_falls_back_to_eager(monkeypatch, capsys):
    def broken(module, **_):
        def call(*args, **kwargs):
            raise RuntimeError("no C++ compiler")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    lin = torch.nn.Linear(4, 3)
    wrapped = execution.Compiled(lin)
    x = torch.randn(2, 4)
    assert torch.equal(wrapped(x), lin(x))
    assert "no C++ compiler" in wrapped.failed and "running eagerly" in capsys.readouterr().err
    assert wrapped.out_features == 3  # attributes pass through
    assert [n for n, _ in wrapped.named_parameters()] == ["module.weight", "module.bias"]


@torch.inference_mode()
def test_bf16_guided_dpmpp_2m_sample_stays_near_float32(pair):
    """20 steps of DPM-Solver++(2M) at guidance 5, both CFG branches in one batch."""
    x, _, ctx = inputs(2)
    null = torch.zeros_like(ctx)
    schedule = NoiseSchedule.build("scaled_linear")
    sigmas = SigmaPlan().sigmas(schedule, 20)
    branches = [Conditioning(context=ctx), Conditioning(context=null)]

    def run(unet):
        den = DiscreteDenoiser(lambda z, t, cond: unet(z, t, cond.context), schedule)
        guided = GuidedDenoiser(den, branches, [5.0, -4.0], [1.0, 0.0], Guidance(scale=5.0), branches[0])
        start = x.double() * DiscreteDenoiser.initial_noise_scale(float(sigmas[0]))
        return sample_dpmpp_2m(guided, start, sigmas)

    ref = run(pair.unet)
    fast = run(execution.for_inference(copy.deepcopy(pair.unet), bf16_weights=True))
    assert ref.dtype == fast.dtype == torch.float64  # the sampler state stays float64
    assert relative(fast, ref) < 2 * BF16_TOL


def test_execution_config_defaults_and_bad_values():
    cfg = load([])
    assert cfg.execution.channels_last and cfg.execution.bf16_weights and not cfg.execution.compile
    with pytest.raises(ConfigError) as exc:
        load(["execution.compile=sometimes"])
    assert "'execution.compile'" in str(exc.value)


def test_gradient_checkpointing_gives_the_same_gradients(pair):
    x, t, ctx = inputs()

    def grads(checkpointing: bool):
        net = execution.for_training(copy.deepcopy(pair.unet), channels_last=False,
                                     checkpointing=checkpointing).train()
        net(x, t, ctx).square().mean().backward()
        return torch.cat([p.grad.flatten() for p in net.parameters()])

    assert torch.allclose(grads(True), grads(False), atol=1e-6, rtol=1e-5)


def test_denoiser_timestep_lookup_stays_on_the_sigma_device():
    den = DiscreteDenoiser(lambda z, t: z, NoiseSchedule.build("scaled_linear"))
    sigmas = den.t_to_sigma(torch.tensor([0.0, 10.5, 999.0]))
    assert torch.allclose(den.sigma_to_t(sigmas), torch.tensor([0.0, 10.5, 999.0], dtype=torch.float64))
