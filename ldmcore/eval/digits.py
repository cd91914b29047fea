"""Class fidelity of generated digits, read by an independent classifier.

The reader is an RBF support-vector machine trained on scikit-learn's real 8x8 digits (a
different model family from the generator, trained on pixels only). Generated images are
averaged down to 8x8 and scaled to the dataset's 0..16 range before reading. The reader's own
accuracy on held-out real digits that went through the same 8 -> 32 -> 8 round trip is
reported beside the score, so a low score cannot hide a broken reader.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ldmcore.data.transforms import build_pipeline


def _to_reader_space(images: np.ndarray) -> np.ndarray:
    """(N, H, W) grey images in [0, 255] -> (N, 64) features in the dataset's 0..16 range."""
    t = torch.from_numpy(images.astype(np.float32))[:, None] / 255.0
    small = F.adaptive_avg_pool2d(t, 8)[:, 0]
    return (small * 16.0).reshape(len(images), -1).numpy()


def split_digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The reader's split of the real 8x8 digits: (x_train, x_test, y_train, y_test), a
    stratified 75 / 25."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    return train_test_split(digits.images, digits.target, test_size=0.25, random_state=seed,
                            stratify=digits.target)


def train_reader(seed: int = 0):
    """An SVC on 75% of the real digits; returns (reader, held-out accuracy via round trip)."""
    from sklearn.svm import SVC

    x_train, x_test, y_train, y_test = split_digits(seed)
    reader = SVC(gamma=0.001, C=10.0).fit(x_train.reshape(len(x_train), -1), y_train)
    pipe = build_pipeline(32)
    up = np.stack([np.clip(pipe(image=(im / 16.0).astype(np.float32))["image"], 0, 1) * 255 for im in x_test])
    held_out = float((reader.predict(_to_reader_space(up)) == y_test).mean())
    return reader, held_out


def read_digits(images: np.ndarray, seed: int = 0) -> tuple[np.ndarray, float]:
    """The digit an independent reader (an SVC on real digits) reads in each of (N, H, W) grey
    images in [0, 255], and the reader's accuracy on held-out real digits (same round trip)."""
    reader, reader_accuracy = train_reader(seed)
    return reader.predict(_to_reader_space(images)), reader_accuracy
