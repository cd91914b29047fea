"""Image folders with sidecar captions: NAME.txt beside NAME.png gives the item a caption."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldmcore.build import build_dataset
from ldmcore.errors import DataError


def folder(root: Path, captions: dict[str, str | None]) -> Path:
    """One small PNG per name (``cls/name`` makes a class sub-folder), with its caption file."""
    for i, (name, caption) in enumerate(captions.items()):
        image = root / f"{name}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(image)
        if caption is not None:
            image.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return root


def test_sidecar_text_is_the_stripped_caption_and_classes_still_work(tmp_path: Path) -> None:
    root = folder(tmp_path, {"cats/a": "  a cat on a mat\n", "dogs/b": "a dog, running \u00e9t\u00e9 "})
    ds = build_dataset("image_folder", path=root, image_size=8)
    items = [ds[i] for i in range(len(ds))]
    assert [(it["caption"], it["class"]) for it in items] == [("a cat on a mat", 0),
                                                              ("a dog, running \u00e9t\u00e9", 1)]
    # pixels are unchanged by the captions: image i is filled with 30 * i
    assert [round(float((it["image"][0, 0, 0] + 1) * 127.5)) for it in items] == [0, 30]


def test_missing_captions_are_named_or_empty(tmp_path: Path) -> None:
    root = folder(tmp_path, {"a": "first", "b": None, "c": "third", "d": None})
    with pytest.raises(DataError) as err:
        build_dataset("image_folder", path=root, image_size=8)
    message = str(err.value)
    assert "2 of 4 images have no caption" in message and "'b.png', 'd.png'" in message
    assert "data.missing_captions=empty" in message
    ds = build_dataset("image_folder", path=root, image_size=8, missing_captions="empty")
    assert [ds[i]["caption"] for i in range(4)] == ["first", "", "third", ""]


def test_no_sidecars_means_no_caption_key(tmp_path: Path) -> None:
    ds = build_dataset("image_folder", path=folder(tmp_path, {"a": None, "b": None}), image_size=8)
    assert "caption" not in ds[0] and "class" not in ds[0]
