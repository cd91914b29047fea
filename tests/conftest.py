import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")  # subprocesses too: the test models are tiny

import torch  # noqa: E402

torch.set_num_threads(1)
