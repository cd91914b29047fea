"""Free phrases as box labels (``conditions.layout.phrase_model=PATH``): each box's phrase embedded
by a frozen local ``transformers`` text model, its pooled output, as GLIGEN embeds its grounding
phrases with the pipeline's CLIP text encoder. Labels may then be any text ("a red circle", "a
purple giraffe"), not only the classes of a table. The model is never trained nor saved in
checkpoints (its folder holds it); each distinct phrase is embedded once and kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ldmcore.errors import ConfigError
from ldmcore.nn.local_models import check_model_folder


class PhraseEncoder:
    """phrases -> (len(phrases), dim): the text model's pooled output of each, on the CPU."""

    def __init__(self, folder: Path, key: str) -> None:
        from transformers import AutoModel, AutoTokenizer

        check_model_folder(folder, key, "the tokenizer files (e.g. an imported run's text_encoder/)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = AutoModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"cannot load a text model from {key}={str(folder)!r}: "
                              f"{' '.join(str(exc).split())[:300]}") from None
        self.model = model.eval().requires_grad_(False)
        self.folder = folder
        self.dim = int(self.model.config.hidden_size)
        self.known: dict[str, torch.Tensor] = {}
        if self(["a"]).shape != (1, self.dim):  # measured, not assumed
            raise ConfigError(f"{key}={str(folder)!r} holds a {type(model).__name__} without a "
                              f"pooled output of its width; name a CLIP text model folder.")

    @torch.no_grad()
    def __call__(self, phrases: Sequence[str]) -> torch.Tensor:
        for phrase in dict.fromkeys(phrases):
            if phrase not in self.known:
                out = self.model(**self.tokenizer([phrase], return_tensors="pt"))
                pooled = getattr(out, "pooler_output", None)
                if pooled is None:
                    return torch.zeros(0)
                self.known[phrase] = pooled[0].float()
        if not phrases:
            return torch.zeros(0, self.dim)
        return torch.stack([self.known[p] for p in phrases])
