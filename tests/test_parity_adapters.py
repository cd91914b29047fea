"""Parity with diffusers on random weights, float32: GLIGEN's gated self-attention and grounding
tokenizer (``GatedSelfAttentionDense``, ``GLIGENTextBoundingboxProjection``, a whole
``UNet2DConditionModel(attention_type="gated")``) and IP-Adapter's decoupled cross-attention
(``IPAdapterAttnProcessor2_0`` with ``ImageProjection``: one attention layer, with and without a
region mask, and a whole UNet).

diffusers' weights are mapped into the plugins' layers (``ldmcore.interop.block_layers``) and
the UNet's (``from_diffusers_unet``); the gates and null features, zero at init, are drawn at
random so every path counts. Tolerance: the largest difference relative to the reference's
largest value, ``1e-4`` (float32 round-off through a few layers is ~1e-6 of the scale).
"""

from __future__ import annotations

import pytest
import torch

from ldm_ip_adapter.encoder import IPAdapterConfig, IPAdapterEncoder
from ldm_layout.encoder import LayoutConfig, LayoutEncoder
from ldmcore.conditioning import BackboneSpec, Injection
from ldmcore.interop.block_layers import gligen_from_diffusers, ip_adapter_from_diffusers
from ldmcore.interop.keymaps import from_diffusers_unet
from ldmcore.nn.attention import CrossAttention
from ldmcore.nn.decoupled_attention import DecoupledKeyValue
from ldmcore.nn.gated_attention import GatedSelfAttention
from ldmcore.nn.grounding import GroundingTokenizer
from ldmcore.nn.inserted_layers import DecoupledTokens, GatedTokens, InsertedLayers
from ldmcore.nn.unet import UNetModel, UNetShape

diffusers = pytest.importorskip("diffusers")

TOL = 1e-4
SHAPE = UNetShape(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2),
                  num_res_blocks=1, attention_levels=(0,), num_heads=8, context_dim=32, norm_groups=32)


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape and bool(ref.isfinite().all())
    return float((ours - ref).abs().max() / ref.abs().max())


def randomize_zero_inits(module: torch.nn.Module) -> None:
    """Gates and null features start at zero; draw them so that the paths they shut count."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.split(".")[-1] in ("alpha_attn", "alpha_dense", "null_positive_feature",
                                       "null_position_feature"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.8)


def diffusers_unet(**extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), **extra).eval()


def ours_unet(state: dict[str, torch.Tensor]) -> UNetModel:
    unet = UNetModel(SHAPE).eval()
    unet.load_state_dict(from_diffusers_unet(state, SHAPE, "the diffusers test UNet"))
    return unet


def backbone() -> BackboneSpec:
    return BackboneSpec(latent_channels=4, latent_size=(8, 8), context_dim=32, image_channels=3,
                        image_size=(64, 64), transformer_blocks=SHAPE.transformer_blocks())


def unet_inputs():
    g = torch.Generator().manual_seed(2)
    return (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 600]),
            torch.randn(2, 7, 32, generator=g))


# -- GLIGEN ---------------------------------------------------------------------------------------

def test_gated_self_attention_matches_diffusers():
    from diffusers.models.attention import GatedSelfAttentionDense

    torch.manual_seed(0)
    theirs = GatedSelfAttentionDense(query_dim=32, context_dim=24, n_heads=4, d_head=8).eval()
    randomize_zero_inits(theirs)
    ours = GatedSelfAttention(32, 24, 4, 8).eval()
    ours.load_state_dict(theirs.state_dict())  # the same names, one to one
    g = torch.Generator().manual_seed(3)
    x, objs = torch.randn(2, 16, 32, generator=g), torch.randn(2, 5, 24, generator=g)
    with torch.no_grad():
        ref = theirs(x, objs)
        assert relative_error(ours(x, objs), ref) <= TOL
        assert relative_error(ours(x, objs, torch.ones(2, 5, dtype=torch.bool)), ref) <= TOL


def test_grounding_tokenizer_matches_diffusers_position_net():
    from diffusers.models.embeddings import GLIGENTextBoundingboxProjection

    torch.manual_seed(0)
    theirs = GLIGENTextBoundingboxProjection(positive_len=24, out_dim=32).eval()
    randomize_zero_inits(theirs)
    ours = GroundingTokenizer(24, 32).eval()
    ours.load_state_dict(theirs.state_dict())
    g = torch.Generator().manual_seed(4)
    boxes, phrases = torch.rand(2, 5, 4, generator=g), torch.randn(2, 5, 24, generator=g)
    present = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        ref = theirs(boxes=boxes, masks=present.float(), positive_embeddings=phrases)
        assert relative_error(ours(phrases, boxes, present), ref) <= TOL


def test_gligen_unet_forward_matches_diffusers():
    """The layout plugin (injection: gated) on our UNet vs diffusers' GLIGEN UNet, the class
    embedding standing for GLIGEN's phrase embeddings."""
    theirs = diffusers_unet(attention_type="gated")
    randomize_zero_inits(theirs)
    state = theirs.state_dict()
    unet = ours_unet({k: v for k, v in state.items() if ".fuser." not in k and not k.startswith("position_net.")})
    layout = LayoutEncoder(LayoutConfig(injection="gated", embed_dim=32, max_boxes=3), backbone()).eval()
    plugin = gligen_from_diffusers(state, SHAPE)
    plugin["class_embedding.weight"] = layout.class_embedding.weight.detach()
    layout.load_state_dict(plugin)
    value = [(torch.tensor([[0.1, 0.2, 0.5, 0.6]]), torch.tensor([2])),
             (torch.tensor([[0.0, 0.0, 0.4, 0.3], [0.5, 0.5, 1.0, 0.9]]), torch.tensor([0, 1]))]
    boxes, labels, present = torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3)
    for i, (b, lab) in enumerate(value):
        boxes[i, :len(b)], labels[i, :len(b)], present[i, :len(b)] = b, lab, 1
    x, t, text = unet_inputs()
    with torch.no_grad():
        ref = theirs(x, t, encoder_hidden_states=text, cross_attention_kwargs={"gligen": {
            "boxes": boxes, "masks": present, "positive_embeddings": layout.class_embedding(labels)}}).sample
        tokens = layout(value)[Injection.GATED_ATTENTION]
        inserted = InsertedLayers(gated=(GatedTokens(layout.fusers, tokens.values, tokens.mask),))
        ours = unet(x, t, text, inserted=inserted)
        without = unet(x, t, text)
    assert relative_error(ours, ref) <= TOL
    assert relative_error(without, ref) > 100 * TOL  # the gated layers did count


# -- IP-Adapter -----------------------------------------------------------------------------------

@pytest.mark.parametrize("region", [False, True], ids=["everywhere", "region"])
def test_decoupled_cross_attention_matches_ip_adapter_processor(region):
    from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0

    torch.manual_seed(0)
    processor = IPAdapterAttnProcessor2_0(hidden_size=32, cross_attention_dim=20, num_tokens=(4,), scale=0.6)
    theirs = Attention(query_dim=32, cross_attention_dim=24, heads=4, dim_head=8, processor=processor).eval()
    ours = CrossAttention(32, 24, 4, 8).eval()
    ours.load_state_dict({k: v for k, v in theirs.state_dict().items() if not k.startswith("processor.")})
    layer = DecoupledKeyValue(20, 4, 8, scale=0.6)
    layer.load_state_dict({"to_k.weight": processor.to_k_ip[0].weight, "to_v.weight": processor.to_v_ip[0].weight})
    g = torch.Generator().manual_seed(5)
    x, text, image = (torch.randn(2, 16, 32, generator=g), torch.randn(2, 7, 24, generator=g),
                      torch.randn(2, 4, 20, generator=g))
    mask = (torch.rand(2, 1, 4, 4, generator=g) > 0.5).float() if region else None  # at the 4x4 block
    extra = {"ip_adapter_masks": [mask]} if region else {}
    tokens = DecoupledTokens([layer], image, torch.ones(2, 4, dtype=torch.bool), mask)
    with torch.no_grad():
        ref = theirs(x, encoder_hidden_states=(text, [image[:, None]]), **extra)
        got = ours(x, text, None, InsertedLayers(decoupled=(tokens,)).beside_cross_attention(0, (4, 4)))
        plain = ours(x, text)
    assert relative_error(got, ref) <= TOL
    assert relative_error(plain, ref) > 100 * TOL


def test_ip_adapter_unet_forward_matches_diffusers():
    """The ip_adapter plugin's projection and key/value layers on our UNet vs diffusers' UNet with
    IP-Adapter processors and ImageProjection, on the same image embeddings."""
    from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection

    theirs = diffusers_unet()
    processors = {}
    for name in theirs.attn_processors:
        attn = theirs.get_submodule(name[:-len(".processor")])
        processors[name] = (IPAdapterAttnProcessor2_0(hidden_size=attn.to_k.out_features, cross_attention_dim=32,
                                                      num_tokens=(4,), scale=0.6)
                            if name.endswith("attn2.processor") else AttnProcessor2_0())
    theirs.set_attn_processor(processors)
    theirs.encoder_hid_proj = MultiIPAdapterImageProjection(
        [ImageProjection(image_embed_dim=16, cross_attention_dim=32, num_image_text_embeds=4)])
    theirs.register_to_config(encoder_hid_dim_type="ip_image_proj")
    theirs.eval()
    state = theirs.state_dict()
    unet = ours_unet({k: v for k, v in state.items()
                      if ".processor." not in k and not k.startswith("encoder_hid_proj.")})
    plugin = IPAdapterEncoder(IPAdapterConfig(embed_dim=16, num_tokens=4, scale=0.6), backbone()).eval()
    mapped = ip_adapter_from_diffusers(state, SHAPE)
    plugin.load_state_dict({**plugin.state_dict(), **mapped})
    assert set(mapped) >= {f"adapters.{i}.to_v.weight" for i in range(len(plugin.adapters))}
    x, t, text = unet_inputs()
    embeds = torch.randn(2, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = theirs(x, t, encoder_hidden_states=text, added_cond_kwargs={"image_embeds": [embeds[:, None]]}).sample
        tokens = plugin.proj(embeds)
        inserted = InsertedLayers(decoupled=(DecoupledTokens(plugin.adapters, tokens,
                                                             torch.ones(2, 4, dtype=torch.bool)),))
        ours = unet(x, t, text, inserted=inserted)
        without = unet(x, t, text)
    assert relative_error(ours, ref) <= TOL
    assert relative_error(without, ref) > 100 * TOL
