"""The ip_adapter plugin's image encoders: a frozen local transformers vision model by path
(never downloaded, never saved in checkpoints) and the default small trainable one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldm_ip_adapter.encoder import IPAdapterConfig, IPAdapterEncoder, ImagePrompt
from ldmcore.build import backbone_spec
from ldmcore.errors import ConfigError
from ldmcore.testing import PluginCase, kit_config


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A CLIP vision tower with a projection (random weights, 16x16 images) and its processor."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = tmp_path_factory.mktemp("clip_vision")
    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=16, patch_size=8, projection_dim=24))
    model.save_pretrained(folder, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


def spec():
    return backbone_spec(kit_config(PluginCase(IPAdapterEncoder, dataset="shapes", image_channels=3), {}))


def test_a_frozen_vision_model_feeds_the_tokens_as_its_processor_prepares_images(clip_folder):
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    enc = IPAdapterEncoder(IPAdapterConfig(model=str(clip_folder)), spec()).eval()
    assert not any(k.startswith("vision") for k in enc.state_dict())  # its folder holds its weights
    assert all(p.requires_grad for p in enc.parameters())  # projection and adapters still train
    pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    # the reference: transformers' own processor (16x16 in: no resize) and the model's image_embeds
    processor = CLIPImageProcessor.from_pretrained(clip_folder)
    reference = CLIPVisionModelWithProjection.from_pretrained(clip_folder).eval()
    with torch.no_grad():
        embeds = reference(**processor(images=list(pixels), do_resize=False, do_center_crop=False,
                                       return_tensors="pt")).image_embeds
        want = enc.proj(embeds)
        got = enc(ImagePrompt(images))[next(iter(enc.output_specs()))].values
    assert embeds.shape[-1] == 24 and enc.proj.image_embeds.in_features == 24  # projection_dim, measured
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    assert not any(p.requires_grad for p in enc.vision.model.parameters())  # frozen


def test_a_folder_without_a_model_is_refused_naming_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="conditions.ip_adapter.model"):
        IPAdapterEncoder(IPAdapterConfig(model=str(tmp_path)), spec())
