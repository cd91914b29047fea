"""The text plugin: a frozen transformers encoder from a local folder (default all-MiniLM-L6-v2)."""

from __future__ import annotations

import pytest
import torch

from ldmcore.conditioning import BackboneSpec, Conditioner, Injection
from ldm_text import TextEncoder

SPEC = BackboneSpec(latent_channels=4, latent_size=(8, 8), context_dim=32, image_channels=3,
                    image_size=(32, 32))


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(TextEncoder.Config(max_length=16), SPEC)


def test_tokens_are_the_frozen_states_projected_with_the_tokenizer_mask(encoder):
    prompts = ["a red circle", "a blue square and a green triangle"]
    out = encoder(prompts)[Injection.CROSSATTN]
    ids, mask = encoder.tokenize(prompts)
    assert out.values.shape == (2, 16, 32)
    assert torch.equal(out.mask, mask.bool())  # padding is masked out of cross-attention
    states = encoder.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(out.values, encoder.proj(states), atol=1e-5)


def test_frozen_weights_stay_out_of_the_checkpoint_and_the_optimizer(encoder):
    assert set(encoder.state_dict()) == {"proj.weight", "proj.bias"}
    assert {n for n, p in encoder.named_parameters() if p.requires_grad} == {"proj.weight", "proj.bias"}
    assert not any(p.requires_grad for p in encoder.transformer.parameters())


def test_null_is_the_empty_prompt(encoder):
    # both sides computed the same way (one prompt, one row): equal bit for bit
    null = encoder.null(1)[Injection.CROSSATTN]
    empty = encoder([""])[Injection.CROSSATTN]
    assert torch.equal(null.values, empty.values) and torch.equal(null.mask, empty.mask)
    # a batch of nulls repeats that row; a batched projection may round differently per CPU
    many = encoder.null(3)[Injection.CROSSATTN]
    torch.testing.assert_close(many.values, null.values.expand_as(many.values))  # float32 defaults
    assert torch.equal(many.mask, null.mask.expand_as(many.mask))


def test_sd_options_attend_to_padding_and_skip_the_projection():
    spec = BackboneSpec(4, (8, 8), 384, 3, (32, 32))  # MiniLM's width: no projection, as in SD
    enc = TextEncoder(TextEncoder.Config(max_length=16, mask_padding=False), spec)
    assert enc.proj is None
    out = Conditioner({"text": enc})({"caption": ["a red circle"]}, 1)  # reads dataset captions
    assert out.context.shape == (1, 16, 384) and bool(out.context_mask.all())


def test_each_distinct_prompt_is_encoded_once_and_served_from_the_cache():
    enc = TextEncoder(TextEncoder.Config(max_length=16, cache_size=3), SPEC)
    calls: list[list[str]] = []
    encode = enc._encode
    enc._encode = lambda prompts: (calls.append(list(prompts)), encode(prompts))[1]
    first, _ = enc.hidden_states(["a red circle", "a blue square", "a red circle"])
    again, _ = enc.hidden_states(["a blue square", "a red circle"])
    assert calls == [["a red circle", "a blue square"]]  # duplicates and repeats never re-encode
    assert torch.equal(again[0], first[1]) and torch.equal(again[1], first[0])
    uncached, _ = encode(["a red circle", "a blue square"])
    assert torch.equal(first[:2], uncached)  # the cache changes no value
    enc.hidden_states(["a", "b", "c", "d"])  # more than the capacity: least recent dropped
    assert len(enc.prompt_cache) == 3 and "a red circle" not in enc.prompt_cache


def test_cache_can_be_switched_off():
    enc = TextEncoder(TextEncoder.Config(max_length=16, cache_size=0), SPEC)
    states, mask = enc.hidden_states(["a cyan triangle"])
    assert states.shape == (1, 16, enc.width) and len(enc.prompt_cache) == 0
