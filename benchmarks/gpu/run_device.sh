#!/usr/bin/env bash
# The one prepared device check (CUDA): the GPU side of issues 6 and 7.
# Run from the repository root on the device machine, with the dependency wheels in .whl/
# (diffusers, pydantic, hydra-core, omegaconf, antlr4, albumentations and ldmcore's own wheel;
# the machine's image has torch, transformers, safetensors and pluggy). Results go to $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
timeout 300 python3 benchmarks/gpu/cuda_perf.py --out "$OUT" --reps 10
echo "cuda_perf exit $?"
timeout 200 python3 benchmarks/gpu/torchrun_nccl.py --out /tmp/nccl
echo "torchrun_nccl exit $?"
cp /tmp/nccl/report.json "$OUT/nccl_report.json" 2>/dev/null || true
