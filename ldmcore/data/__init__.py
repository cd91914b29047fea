"""Datasets (dicts of ``image``, ``class``, ...) and their albumentations pipelines."""

from ldmcore.data.datasets import DATASETS, build_dataset, collate

__all__ = ["DATASETS", "build_dataset", "collate"]
