"""The photos dataset: crops of the photos scikit-learn and scikit-image ship, right strip held out."""

from __future__ import annotations

import pytest
import torch

from ldmcore.data.photos import HOLDOUT_FRACTION, PhotosDataset, _photos
from ldmcore.errors import DataError


def test_every_shipped_photo_loads_without_a_download():
    photos = _photos()
    assert len(photos) == 7
    assert all(p.ndim == 3 and p.shape[2] == 3 and p.dtype.name == "uint8" for p in photos)


def test_crops_are_seeded_images_in_range_and_held_out_crops_differ():
    train, again = PhotosDataset(num_items=4), PhotosDataset(num_items=4)
    held = PhotosDataset(num_items=4, holdout=True)
    a = train[0]["image"]
    assert a.shape == (3, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, again[0]["image"])
    assert not torch.equal(a, held[0]["image"])


def test_held_out_crops_come_only_from_the_right_strip(monkeypatch):
    # one photo whose left 75% is black and right 25% white: held-out crops are all white
    photo = torch.zeros(300, 400, 3, dtype=torch.uint8)
    photo[:, int(400 * (1 - HOLDOUT_FRACTION)):] = 255
    monkeypatch.setattr("ldmcore.data.photos._photos", lambda: (photo.numpy(),))
    held, train = PhotosDataset(num_items=8, holdout=True), PhotosDataset(num_items=8)
    assert all(bool((held[i]["image"] == 1).all()) for i in range(8))
    assert all(bool((train[i]["image"] == -1).all()) for i in range(8))


def test_a_crop_larger_than_the_held_out_strip_is_refused():
    with pytest.raises(DataError, match="crop_scale"):
        PhotosDataset(image_size=64, crop_scale=4)
