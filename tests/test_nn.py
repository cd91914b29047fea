"""Embeddings, attention, the UNet and the KL autoencoder against independent truths.

Truths used: the sinusoid formulas written out with ``math``; attention written as
softmax(QK^T / sqrt(d)) V by hand in float64; the published parameter counts and tensor shapes
of Stable Diffusion's UNet and first-stage autoencoder (built on the meta device, no memory);
the closed-form Gaussian KL and ``torch.distributions``; symmetries (pixel-permutation
equivariance of a transformer without positions, per-sample independence of a batch).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ldmcore.nn.attention import CrossAttention, SpatialTransformer, attention
from ldmcore.nn.autoencoder import (
    AttnBlock,
    AutoencoderKL,
    AutoencoderShape,
    DiagonalGaussian,
)
from ldmcore.nn.embeddings import FourierFeatures, timestep_embedding
from ldmcore.nn.unet import UNetModel, UNetShape



def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------
# embeddings
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [8, 7, 32])
def test_timestep_embedding_is_cos_then_sin_of_geometric_frequencies(dim: int) -> None:
    ts = [0.0, 1.0, 17.5, 250.0, 999.0]
    emb = timestep_embedding(torch.tensor(ts), dim)
    assert emb.shape == (len(ts), dim) and emb.dtype == torch.float32
    half = dim // 2
    for row, t in zip(emb, ts):
        freqs = [math.exp(-math.log(10000.0) * i / half) for i in range(half)]
        expected = [math.cos(t * f) for f in freqs] + [math.sin(t * f) for f in freqs]
        expected += [0.0] * (dim % 2)  # odd widths get a zero column
        # float32 arguments up to ~1000 rad carry ~1e-4 absolute phase error
        torch.testing.assert_close(row.double(), torch.tensor(expected, dtype=torch.float64),
                                   rtol=0, atol=2e-4)
    # each (cos, sin) pair lies on the unit circle; t = 0 is [1..1 | 0..0]
    torch.testing.assert_close(emb[:, :half] ** 2 + emb[:, half:2 * half] ** 2,
                               torch.ones(len(ts), half))
    assert torch.equal(emb[0, :half], torch.ones(half)) and not emb[0, half:].any()


def test_timestep_embedding_max_period_sets_the_slowest_frequency() -> None:
    emb = timestep_embedding(torch.tensor([3.0]), 4, max_period=100.0)
    # half = 2: frequencies 1 and 100 ** (-1/2) = 0.1
    torch.testing.assert_close(emb[0], torch.tensor([math.cos(3), math.cos(0.3),
                                                     math.sin(3), math.sin(0.3)]))


def test_fourier_features_are_sin_then_cos_of_octaves_per_coordinate() -> None:
    ff = FourierFeatures(num_freqs=4)
    x = torch.tensor([[0.25, -0.1, 0.5], [0.0, 1.0, 0.3]], dtype=torch.float64)
    out = ff(x)
    assert out.shape == (2, ff.out_dim(3)) and ff.out_dim(3) == 2 * 3 * 4
    for b in range(2):
        expected = []
        for c in range(3):
            args = [(2 ** k) * math.pi * x[b, c].item() for k in range(4)]
            expected += [math.sin(a) for a in args] + [math.cos(a) for a in args]
        torch.testing.assert_close(out[b], torch.tensor(expected, dtype=torch.float64),
                                   rtol=0, atol=1e-6)
    assert "freqs" not in ff.state_dict()  # derived, not a weight


# ------------------------------------------------------------------------------------------
# attention
# ------------------------------------------------------------------------------------------


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V over (B, H, L, d), masked keys (False) get zero weight."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


def test_attention_core_matches_the_textbook_formula() -> None:
    g = _gen(0)
    q, k, v = (torch.randn(2, 3, 5 if i == 0 else 7, 4, generator=g, dtype=torch.float64)
               for i in range(3))
    mask = torch.rand(2, 1, 1, 7, generator=g) > 0.4
    mask[..., 0] = True
    torch.testing.assert_close(attention(q, k, v, mask), reference_attention(q, k, v, mask),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(attention(q, k, v), reference_attention(q, k, v),
                               rtol=1e-12, atol=1e-12)


def _cross_attention(query_dim: int = 12, context_dim: int | None = 10, heads: int = 2,
                     head_dim: int = 6) -> CrossAttention:
    torch.manual_seed(0)
    return CrossAttention(query_dim, context_dim, heads, head_dim).double()


def _manual_cross_attention(m: CrossAttention, x: torch.Tensor, ctx: torch.Tensor,
                            mask: torch.Tensor | None) -> torch.Tensor:
    b, h, d = x.shape[0], m.heads, m.head_dim

    def split(t: torch.Tensor) -> torch.Tensor:  # (B, L, h*d) -> (B, h, L, d)
        return t.reshape(b, t.shape[1], h, d).permute(0, 2, 1, 3)

    q = split(x @ m.to_q.weight.T)
    k, v = split(ctx @ m.to_k.weight.T), split(ctx @ m.to_v.weight.T)
    out = reference_attention(q, k, v, None if mask is None else mask[:, None, None, :])
    out = out.permute(0, 2, 1, 3).reshape(b, -1, h * d)
    return out @ m.to_out[0].weight.T + m.to_out[0].bias


def test_cross_attention_equals_multihead_softmax_attention_with_padding_mask() -> None:
    m = _cross_attention()
    g = _gen(1)
    x = torch.randn(3, 5, 12, generator=g, dtype=torch.float64)
    ctx = torch.randn(3, 4, 10, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(m(x, ctx, mask), _manual_cross_attention(m, x, ctx, mask),
                                   rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(m(x, ctx), _manual_cross_attention(m, x, ctx, None),
                                   rtol=1e-10, atol=1e-12)
        # self-attention: keys and values from x itself
        s = _cross_attention(context_dim=None)
        torch.testing.assert_close(s(x), _manual_cross_attention(s, x, x, None),
                                   rtol=1e-10, atol=1e-12)


def test_masked_context_tokens_have_no_influence() -> None:
    m = _cross_attention()
    g = _gen(2)
    x = torch.randn(2, 5, 12, generator=g, dtype=torch.float64)
    ctx = torch.randn(2, 4, 10, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 0, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        base = m(x, ctx, mask)
        changed = ctx.clone()
        changed[~mask] = 1e3 * torch.randn(int((~mask).sum()), 10, generator=g,
                                           dtype=torch.float64)
        torch.testing.assert_close(m(x, changed, mask), base, rtol=0, atol=1e-12)
        # a single unmasked token changes the output: the test above is not vacuous
        changed[0, 2] += 1.0
        assert (m(x, changed, mask)[0] - base[0]).abs().max() > 1e-3
        # the mask is a key-padding mask for cross-attention only: truncating the padded
        # tokens gives the same answer as masking them
        torch.testing.assert_close(m(x[:1], ctx[:1, mask[0]]), base[:1], rtol=1e-10, atol=1e-12)


def test_cpu_bf16_autocast_stays_close_to_float32() -> None:
    torch.manual_seed(0)
    m = CrossAttention(64, 32, 4, 16)
    g = _gen(3)
    x, ctx = torch.randn(2, 50, 64, generator=g), torch.randn(2, 9, 32, generator=g)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    with torch.no_grad():
        ref = m(x, ctx, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(x, ctx, mask)
    assert low.dtype == torch.bfloat16
    # bf16 keeps 8 mantissa bits (relative step 2^-8 = 0.4%); four matmuls in a row
    err = (low.float() - ref).abs().max() / ref.abs().max()
    assert err < 0.03, err


def _spatial_pair(use_linear: bool) -> SpatialTransformer:
    torch.manual_seed(0)
    return SpatialTransformer(16, 2, 8, 12, depth=2, groups=4, use_linear=use_linear).double()


def test_spatial_transformer_conv_and_linear_projections_are_the_same_map() -> None:
    conv, lin = _spatial_pair(False), _spatial_pair(True)
    state = conv.state_dict()
    for name in ("proj_in.weight", "proj_out.weight"):
        state[name] = state[name][:, :, 0, 0]  # a 1x1 conv is a per-pixel linear map
    lin.load_state_dict(state)
    g = _gen(4)
    x = torch.randn(2, 16, 3, 5, generator=g, dtype=torch.float64)
    ctx = torch.randn(2, 3, 12, generator=g, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(lin(x, ctx), conv(x, ctx), rtol=1e-10, atol=1e-12)


def test_spatial_transformer_is_equivariant_to_pixel_permutations() -> None:
    """No positional encoding: permuting the pixels permutes the output the same way."""
    m = _spatial_pair(False)
    g = _gen(5)
    x = torch.randn(2, 16, 4, 4, generator=g, dtype=torch.float64)
    ctx = torch.randn(2, 3, 12, generator=g, dtype=torch.float64)
    perm = torch.randperm(16, generator=g)

    def shuffle(t: torch.Tensor) -> torch.Tensor:
        return t.flatten(2)[:, :, perm].reshape(t.shape)

    with torch.no_grad():
        torch.testing.assert_close(m(shuffle(x), ctx), shuffle(m(x, ctx)), rtol=1e-10,
                                   atol=1e-12)


# ------------------------------------------------------------------------------------------
# UNet
# ------------------------------------------------------------------------------------------

TINY = UNetShape(in_channels=5, out_channels=4, model_channels=32, channel_mult=(1, 2),
                 num_res_blocks=1, attention_levels=(1,), num_head_channels=16,
                 context_dim=24, vector_dim=6, norm_groups=8)


def _live(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialise the zero-initialised convs so every path carries signal."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and not m.weight.any():
            m.reset_parameters()
    return model.eval()


def _unet_inputs(b: int = 2, seed: int = 0, n_tokens: int = 5
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    x = torch.randn(b, TINY.in_channels, 8, 8, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    ctx = torch.randn(b, n_tokens, TINY.context_dim, generator=g)
    mask = torch.ones(b, n_tokens, dtype=torch.bool)
    mask[:, -2:] = False
    vec = torch.randn(b, TINY.vector_dim, generator=g)
    return x, t, ctx, mask, vec


def test_unet_parameter_names_follow_the_compvis_layout() -> None:
    sd = UNetModel(TINY).state_dict()
    emb = 4 * TINY.model_channels
    expected_shapes = {
        "time_embed.0.weight": (emb, 32), "time_embed.2.weight": (emb, emb),
        "input_blocks.0.0.weight": (32, 5, 3, 3),
        "input_blocks.1.0.in_layers.2.weight": (32, 32, 3, 3),
        "input_blocks.1.0.emb_layers.1.weight": (32, emb),
        "input_blocks.1.0.out_layers.3.weight": (32, 32, 3, 3),
        "input_blocks.2.0.op.weight": (32, 32, 3, 3),  # Downsample
        "input_blocks.3.0.skip_connection.weight": (64, 32, 1, 1),
        "input_blocks.3.1.proj_in.weight": (64, 64, 1, 1),
        "input_blocks.3.1.transformer_blocks.0.attn1.to_q.weight": (64, 64),
        "input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight": (64, 24),
        "input_blocks.3.1.transformer_blocks.0.attn2.to_out.0.weight": (64, 64),
        "input_blocks.3.1.transformer_blocks.0.ff.net.0.proj.weight": (512, 64),
        "input_blocks.3.1.transformer_blocks.0.ff.net.2.weight": (64, 256),
        "input_blocks.3.1.transformer_blocks.0.norm3.weight": (64,),
        "middle_block.0.in_layers.0.weight": (64,),
        "middle_block.1.proj_in.weight": (64, 64, 1, 1),
        "middle_block.2.out_layers.3.weight": (64, 64, 3, 3),
        "output_blocks.0.0.in_layers.2.weight": (64, 128, 3, 3),
        "output_blocks.1.1.transformer_blocks.0.attn2.to_v.weight": (64, 24),
        "output_blocks.1.2.conv.weight": (64, 64, 3, 3),  # Upsample
        "output_blocks.2.0.skip_connection.weight": (32, 96, 1, 1),
        "output_blocks.3.0.in_layers.2.weight": (32, 64, 3, 3),
        "out.0.weight": (32,), "out.2.weight": (4, 32, 3, 3),
    }
    for key, shape in expected_shapes.items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, (key, tuple(sd[key].shape))
    # 1 stem + 1 ResBlock per level + 1 Downsample between levels; 2 ResBlocks per level back up
    assert {k.split(".")[1] for k in sd if k.startswith("input_blocks.")} == {"0", "1", "2", "3"}
    assert {k.split(".")[1] for k in sd if k.startswith("output_blocks.")} == {"0", "1", "2", "3"}
    # the vector condition is an MLP into the timestep-embedding width
    label = {k: tuple(v.shape) for k, v in sd.items() if k.startswith("label_emb.")}
    assert label == {"label_emb.0.0.weight": (emb, 6), "label_emb.0.0.bias": (emb,),
                     "label_emb.0.2.weight": (emb, emb), "label_emb.0.2.bias": (emb,)}  # SDXL names
    no_vec = UNetModel(UNetShape(**{**TINY.__dict__, "vector_dim": 0})).state_dict()
    assert not any(k.startswith("label_emb") for k in no_vec)


@pytest.mark.parametrize("use_linear,context_dim,params", [
    (False, 768, 859_520_964),  # SD 1.x UNet
    (True, 1024, 865_910_724),  # SD 2.x UNet (linear proj_in/proj_out, OpenCLIP-H context)
])
def test_unet_at_stable_diffusion_size_has_the_published_shapes(
        use_linear: bool, context_dim: int, params: int) -> None:
    shape = UNetShape(in_channels=4, out_channels=4, model_channels=320,
                      channel_mult=(1, 2, 4, 4), num_res_blocks=2, attention_levels=(0, 1, 2),
                      num_head_channels=64, context_dim=context_dim,
                      use_linear_in_transformer=use_linear)
    with torch.device("meta"):
        unet = UNetModel(shape)
    sd = unet.state_dict()
    assert sum(p.numel() for p in unet.parameters()) == params
    assert len(sd) == 686
    proj = (1280, 1280) if use_linear else (1280, 1280, 1, 1)
    for key, want in {
        "time_embed.0.weight": (1280, 320),
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, context_dim),
        "input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "input_blocks.11.0.out_layers.3.weight": (1280, 1280, 3, 3),
        "middle_block.1.proj_in.weight": proj,
        "output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        "output_blocks.11.1.transformer_blocks.0.attn1.to_q.weight": (320, 320),
        "out.2.weight": (4, 320, 3, 3),
    }.items():
        assert tuple(sd[key].shape) == want, key


def test_unet_output_is_exactly_zero_at_initialisation() -> None:
    torch.manual_seed(0)
    unet = UNetModel(TINY).eval()
    x, t, ctx, mask, vec = _unet_inputs()
    with torch.no_grad():
        out = unet(x, t, ctx, mask, vec)
    assert out.shape == (2, TINY.out_channels, 8, 8)
    assert not out.any()
    # ...and the ResBlocks start as identities on their skip path (zeroed out_layers)
    assert all(not m.out_layers[-1].weight.any() for m in unet.modules()
               if type(m).__name__ == "ResBlock")


def test_unet_sees_context_only_through_unmasked_tokens() -> None:
    unet = _live(UNetModel(TINY))
    x, t, ctx, mask, vec = _unet_inputs()
    with torch.no_grad():
        base = unet(x, t, ctx, mask, vec)
        assert base.abs().mean() > 1e-2
        padded = ctx.clone()
        padded[~mask] = 100 * torch.randn(int((~mask).sum()), TINY.context_dim, generator=_gen(9))
        torch.testing.assert_close(unet(x, t, padded, mask, vec), base, rtol=0, atol=1e-5)
        # the same tokens, unmasked, do change the output
        assert (unet(x, t, padded, torch.ones_like(mask), vec) - base).abs().max() > 1e-2
        # dropping the padded tokens altogether is the same as masking them
        torch.testing.assert_close(unet(x, t, ctx[:, :3], None, vec), base, rtol=0, atol=1e-5)


def test_unet_output_depends_on_vector_and_timestep() -> None:
    unet = _live(UNetModel(TINY))
    x, t, ctx, mask, vec = _unet_inputs()
    with torch.no_grad():
        base = unet(x, t, ctx, mask, vec)
        assert (unet(x, t, ctx, mask, vec + 1.0) - base).abs().max() > 1e-2
        assert (unet(x, t + 100, ctx, mask, vec) - base).abs().max() > 1e-2
        # determinism in eval mode
        assert torch.equal(unet(x, t, ctx, mask, vec), base)


def test_unet_samples_in_a_batch_are_independent() -> None:
    unet = _live(UNetModel(TINY))
    x, t, ctx, mask, vec = _unet_inputs(b=3)
    with torch.no_grad():
        batched = unet(x, t, ctx, mask, vec)
        for i in range(3):
            s = slice(i, i + 1)
            torch.testing.assert_close(unet(x[s], t[s], ctx[s], mask[s], vec[s]), batched[s],
                                       rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channel_mult,attention_levels,middle_attention,use_linear", [
    ((1, 2), (0,), False, True),
    ((2, 4), (1,), True, False),  # first level wider than model_channels
    ((1, 1, 2), (0, 2), True, True),
])
def test_unet_variants_map_the_input_grid_to_itself(channel_mult: tuple[int, ...],
                                                    attention_levels: tuple[int, ...],
                                                    middle_attention: bool,
                                                    use_linear: bool) -> None:
    shape = UNetShape(in_channels=3, out_channels=2, model_channels=16,
                      channel_mult=channel_mult, num_res_blocks=1,
                      attention_levels=attention_levels, num_head_channels=16,
                      middle_attention=middle_attention, context_dim=None,
                      use_linear_in_transformer=use_linear, norm_groups=8)
    unet = _live(UNetModel(shape))
    size = 2 ** (len(channel_mult) - 1) * 3
    x = torch.randn(2, 3, size, size, generator=_gen(0))
    with torch.no_grad():
        out = unet(x, torch.tensor([0, 999]))
    assert out.shape == (2, 2, size, size)
    assert torch.isfinite(out).all() and out.abs().mean() > 1e-3


def test_unet_bf16_autocast_stays_close_to_float32() -> None:
    unet = _live(UNetModel(TINY))
    x, t, ctx, mask, vec = _unet_inputs()
    with torch.no_grad():
        ref = unet(x, t, ctx, mask, vec)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = unet(x, t, ctx, mask, vec)
    err = (low.float() - ref).abs().max() / ref.abs().max()
    assert err < 0.05, err


def test_unet_rejects_inputs_that_do_not_match_its_shape() -> None:
    unet = UNetModel(TINY)
    x, t, ctx, mask, vec = _unet_inputs()
    with pytest.raises(ValueError, match="expects 5 input channels, got 4"):
        unet(x[:, :4], t, ctx, mask, vec)
    with pytest.raises(ValueError, match="pass `vector`"):
        unet(x, t, ctx, mask)
    with pytest.raises(ValueError, match="pass `context`"):
        unet(x, t, None, None, vec)


# ------------------------------------------------------------------------------------------
# autoencoder
# ------------------------------------------------------------------------------------------

AE = AutoencoderShape(in_channels=3, out_channels=3, latent_channels=4, ch=16,
                      ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), norm_groups=8)


def test_autoencoder_parameter_names_follow_the_compvis_layout() -> None:
    sd = AutoencoderKL(AE).state_dict()
    for key, shape in {
        "encoder.conv_in.weight": (16, 3, 3, 3),
        "encoder.down.0.block.0.conv1.weight": (16, 16, 3, 3),
        "encoder.down.0.downsample.conv.weight": (16, 16, 3, 3),
        "encoder.down.1.block.0.nin_shortcut.weight": (32, 16, 1, 1),
        "encoder.down.1.attn.0.q.weight": (32, 32, 1, 1),
        "encoder.mid.attn_1.q.weight": (32, 32, 1, 1),
        "encoder.mid.block_2.norm2.weight": (32,),
        "encoder.conv_out.weight": (8, 32, 3, 3),
        "quant_conv.weight": (8, 8, 1, 1),
        "post_quant_conv.weight": (4, 4, 1, 1),
        "decoder.conv_in.weight": (32, 4, 3, 3),
        "decoder.mid.attn_1.proj_out.weight": (32, 32, 1, 1),
        "decoder.up.1.block.1.conv2.weight": (32, 32, 3, 3),
        "decoder.up.1.attn.1.k.weight": (32, 32, 1, 1),
        "decoder.up.1.upsample.conv.weight": (32, 32, 3, 3),
        "decoder.up.0.block.0.nin_shortcut.weight": (16, 32, 1, 1),
        "decoder.conv_out.weight": (3, 16, 3, 3),
        "scale_factor": (),
    }.items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, (key, tuple(sd[key].shape))
    # no downsample after the last encoder level, no upsample at full resolution
    assert not any(k.startswith(("encoder.down.1.downsample", "decoder.up.0.upsample")) for k in sd)


def test_autoencoder_at_stable_diffusion_size_has_the_published_shapes() -> None:
    shape = AutoencoderShape(in_channels=3, out_channels=3, latent_channels=4, ch=128,
                             ch_mult=(1, 2, 4, 4), num_res_blocks=2, attn_levels=())
    with torch.device("meta"):
        ae = AutoencoderKL(shape)
    sd = ae.state_dict()
    assert sum(p.numel() for p in ae.parameters()) == 83_653_863  # SD's first_stage_model
    assert len(sd) == 248 + 1  # SD's 248 tensors plus our scale_factor buffer
    assert shape.downsample_factor == 8
    for key, want in {
        "encoder.down.3.block.1.conv2.weight": (512, 512, 3, 3),
        "encoder.down.2.downsample.conv.weight": (512, 512, 3, 3),
        "decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.up.1.block.0.nin_shortcut.weight": (256, 512, 1, 1),
        "decoder.up.0.block.2.conv1.weight": (128, 128, 3, 3),
    }.items():
        assert tuple(sd[key].shape) == want, key


@pytest.mark.parametrize("ch_mult", [(1,), (1, 2), (1, 2, 2), (1, 1, 2, 2)])
def test_latent_grid_is_the_image_grid_divided_by_the_factor(ch_mult: tuple[int, ...]) -> None:
    shape = AutoencoderShape(in_channels=1, out_channels=2, latent_channels=3, ch=8,
                             ch_mult=ch_mult, num_res_blocks=1, norm_groups=4)
    f = shape.downsample_factor
    assert f == 2 ** (len(ch_mult) - 1)
    torch.manual_seed(0)
    ae = AutoencoderKL(shape).eval()
    x = torch.randn(2, 1, 16, 24, generator=_gen(0))
    with torch.no_grad():
        posterior = ae.encode(x)
        assert posterior.mean.shape == posterior.logvar.shape == (2, 3, 16 // f, 24 // f)
        recon, post = ae(x, _gen(1))
    assert recon.shape == (2, 2, 16, 24)
    torch.testing.assert_close(post.mean, posterior.mean)


def test_attn_block_is_single_head_softmax_attention_over_pixels() -> None:
    torch.manual_seed(0)
    blk = AttnBlock(8, 4).double()
    x = torch.randn(2, 8, 3, 4, generator=_gen(0), dtype=torch.float64)
    with torch.no_grad():
        y = blk.norm(x)
        q, k, v = (m(y).flatten(2).transpose(1, 2) for m in (blk.q, blk.k, blk.v))  # (B, HW, C)
        w = (q @ k.transpose(1, 2) / math.sqrt(8)).softmax(-1)
        expected = x + blk.proj_out((w @ v).transpose(1, 2).reshape(2, 8, 3, 4))
        torch.testing.assert_close(blk(x), expected, rtol=1e-10, atol=1e-12)


def test_kl_matches_the_closed_form_and_torch_distributions() -> None:
    g = _gen(0)
    mean = torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64)
    logvar = torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64)
    post = DiagonalGaussian(mean, logvar)
    kl = post.kl()
    assert kl.shape == (3,)
    var = logvar.exp()
    closed = 0.5 * (mean ** 2 + var - 1 - torch.log(var)).flatten(1).sum(1)
    torch.testing.assert_close(kl, closed, rtol=1e-12, atol=0)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    torch.testing.assert_close(kl, torch.distributions.kl_divergence(q, p).flatten(1).sum(1),
                               rtol=1e-12, atol=1e-12)
    # zero exactly at the prior
    assert not DiagonalGaussian(torch.zeros(2, 3), torch.zeros(2, 3)).kl().any()


def test_posterior_samples_and_moment_split() -> None:
    g = _gen(1)
    moments = torch.randn(2, 6, 3, 3, generator=g, dtype=torch.float64)
    moments[0, 3:] = 50.0  # logvar beyond the clamp
    moments[1, 3:] = -50.0
    post = DiagonalGaussian.from_moments(moments)
    assert torch.equal(post.mean, moments[:, :3])
    assert post.logvar[0].eq(20.0).all() and post.logvar[1].eq(-30.0).all()
    post = DiagonalGaussian(moments[:, :3], torch.full((2, 3, 3, 3), -1.0, dtype=torch.float64))
    z = post.sample(_gen(7))
    noise = torch.randn(2, 3, 3, 3, generator=_gen(7), dtype=torch.float64)
    torch.testing.assert_close(z, post.mean + math.exp(-0.5) * noise, rtol=0, atol=1e-14)
    # many draws: empirical std is exp(logvar / 2)
    wide = DiagonalGaussian(torch.full((40000, 1), 2.0), torch.full((40000, 1), math.log(0.25)))
    draws = wide.sample(_gen(3))
    assert draws.mean().item() == pytest.approx(2.0, abs=5 * 0.5 / 200)
    assert draws.std().item() == pytest.approx(0.5, abs=5 * 0.5 / math.sqrt(80000))


def test_fit_scale_factor_standardises_latents_and_is_saved() -> None:
    torch.manual_seed(0)
    ae = AutoencoderKL(AE).eval()
    x = torch.randn(4, 3, 16, 16, generator=_gen(0))
    torch.manual_seed(11)
    factor = ae.fit_scale_factor(x)
    torch.manual_seed(11)
    with torch.no_grad():
        z = ae.encode(x).sample()
    assert factor == pytest.approx(1.0 / z.std().item(), rel=1e-6)
    assert float(ae.scale_factor) == pytest.approx(factor)
    with torch.no_grad():
        latents = ae.latents(x, _gen(5))
        torch.testing.assert_close(latents, ae.encode(x).sample(_gen(5)) * factor)
        assert latents.std().item() == pytest.approx(1.0, abs=0.05)
        # images() undoes the scaling: decoding the unscaled latent gives the same image
        torch.testing.assert_close(ae.images(latents), ae.decode(latents / factor))
    # the factor travels with the weights
    fresh = AutoencoderKL(AE)
    assert float(fresh.scale_factor) == 1.0
    fresh.load_state_dict(ae.state_dict())
    assert float(fresh.scale_factor) == pytest.approx(factor)


def test_kl_gradient_matches_its_derivative() -> None:
    """d KL / d mean = mean and d KL / d logvar = (exp(logvar) - 1) / 2, elementwise."""
    g = _gen(2)
    mean = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    logvar = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    DiagonalGaussian(mean, logvar).kl().sum().backward()
    torch.testing.assert_close(mean.grad, mean.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(logvar.grad, 0.5 * (logvar.detach().exp() - 1), rtol=1e-12,
                               atol=1e-15)
