#!/usr/bin/env bash
# The one prepared device check (CUDA): ldmcore against diffusers on one GPU (cuda_perf.py) and
# the data-parallel parity runs on NCCL (torchrun_nccl.py).
# Run from the repository root on the device machine, with the dependency wheels in .whl/
# (diffusers, pydantic, hydra-core, omegaconf, antlr4, albumentations and ldmcore's own wheel;
# the machine's image has torch, transformers, safetensors and pluggy). Results go to $OUT.
# Making .whl/ on a machine with PyPI (the image's Python is 3.12):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl diffusers pydantic pydantic_core annotated-types \
#     typing-inspection hydra-core omegaconf albumentations albucore simsimd stringzilla
#   pip wheel --no-deps antlr4-python3-runtime==4.9.3 -w .whl    # sdist only on PyPI
#   pip wheel --no-deps --no-build-isolation . -w .whl             # ldmcore, plugins, conf
# (pin the versions .venv has: `pip list`). Both benchmarks run from /tmp so that ldmcore and
# `python -m ldmcore.cli` import the installed wheel (with its conf/), not the source tree; the
# repository comes after the wheel on PYTHONPATH for the `benchmarks` package only.
set -u
REPO=$(pwd)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$REPO HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
OUT=$(realpath -m "${OUT:-runs/device}")
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
(cd /tmp && timeout 300 python3 -m benchmarks.gpu.cuda_perf --out "$OUT" --reps 10)
echo "cuda_perf exit $?"
(cd /tmp && timeout 200 python3 -m benchmarks.gpu.torchrun_nccl --out /tmp/nccl)
echo "torchrun_nccl exit $?"
cp /tmp/nccl/report.json "$OUT/nccl_report.json" 2>/dev/null || true
