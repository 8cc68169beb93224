#!/usr/bin/env bash
# The GPU checks in one prepared call (a lent GPU machine has torch, torchvision, pytest, scikit-learn and Pillow, no
# Hydra or MLflow; hence --noconftest): the CUDA tests, the loss benchmark (its CUDA cases run under
# torch.cuda.set_sync_debug_mode("error")), AMP training steps and GHM against focal loss per iteration.
#   bash benchmarks/gpu.sh          # writes $OUT/gpu.log when OUT is set (the device tool), else ./gpu.log
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
log=${OUT:-.}/gpu.log
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'
  python3 -m pytest -q --noconftest -p no:cacheprovider tests/test_cuda.py
  python3 benchmarks/bench_losses.py
  python3 benchmarks/bench_training.py --amp --repeats 20
  python3 benchmarks/bench_training.py --model retinanet_r50_fpn --image-size 800 --batch 4 --amp --repeats 10
} 2>&1 | tee "$log"
