"""Datasets (dicts of ``image``, ``class``, ...) and their albumentations pipelines; datasets are
found by name through the registry (``register_datasets``, ``ldmcore.data.builtin``)."""
