"""The generated reference pages stay current: regenerating them gives the files in docs/
byte for byte, every trainer key is in the reference with a description, and the dataset page
says what a real batch holds (checked against ``collate`` of real items)."""

from __future__ import annotations

import pytest
import torch

from ldmcore.build import build_dataset
from ldmcore.config import AutoencoderTrainConfig, TrainerConfig, load
from ldmcore.data.datasets import collate
from ldmcore.docgen import DOCS, PAGES


@pytest.mark.parametrize("name", sorted(PAGES))
def test_a_generated_page_is_current(name):
    assert (DOCS / name).read_text() == PAGES[name](), (
        f"docs/{name} is stale: run `python -m ldmcore.docgen` and commit the result")


def test_every_trainer_key_is_described():
    page = (DOCS / "trainer.md").read_text()
    for prefix, model in (("trainer.", TrainerConfig), ("autoencoder.train.", AutoencoderTrainConfig)):
        for name, field in model.model_fields.items():
            assert f"`{prefix}{name}" in page
            nested = getattr(field.annotation, "model_fields", None)
            assert field.description or nested, f"{prefix}{name} has no description"


def test_the_shapes_row_matches_a_real_batch():
    data = load(["data=shapes"]).data
    dataset = build_dataset("shapes", 64, **data.dataset_kwargs())
    counts = [len(dataset[i]["labels"]) for i in range(64)]
    mixed = next(i for i in range(63) if counts[i] != counts[i + 1])
    batch = collate([dataset[mixed], dataset[mixed + 1]])
    assert isinstance(batch["bboxes"], list) and [b.shape[1] for b in batch["bboxes"]] == [4, 4]
    assert batch["image"].shape == (2, 3, data.image_size, data.image_size)
    assert batch["mask"].dtype == torch.int64 and isinstance(batch["caption"][0], str)
    page = (DOCS / "datasets.md").read_text()
    assert "| `bboxes` | tensor float32 | (N, 4) | a list of B float32 tensors" in page
    assert f"| `image` | tensor float32 | (3, {data.image_size}, {data.image_size}) |" in page
