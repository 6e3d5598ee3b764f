#!/usr/bin/env bash
# Every GPU check and benchmark in one go, for a machine with torch only (no Ray, Optuna, W&B).
# Usage: bash benchmarks/run_gpu.sh OUT_DIR
# A GPU box without pydantic or mnist1d (and without network) gets them from wheels in .gpu_wheels/, made with
#   pip download pydantic==2.13.4 pydantic-core==2.46.4 annotated-types typing-inspection typing-extensions \
#     mnist1d --python-version 3.12 --only-binary=:all: --platform manylinux2014_x86_64 -d .gpu_wheels --no-deps
# (match pydantic-core to pydantic and --python-version to the box's Python).
set -u
out=${1:-gpu_results}; mkdir -p "$out"
cd "$(dirname "$0")/.."
if ! python3 -c "import pydantic, mnist1d" 2>/dev/null && [ -d .gpu_wheels ]; then
  python3 -m pip install -q --no-index --no-deps .gpu_wheels/*.whl 2>&1 | tail -2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
section() { echo; echo "=== $1"; }
section "correctness: graph vs eager, stacked vs alone, masks"
timeout 120 python3 benchmarks/gpu_checks.py 2>&1 | tee "$out/gpu_checks.txt"
section "engine vs reference loop"
timeout 240 python3 benchmarks/bench_engine.py --device cuda --resnet-ks 8 32 128 --json "$out/bench_engine.json" 2>&1 | tee "$out/bench_engine.txt"
section "packing trials on one GPU"
timeout 110 python3 benchmarks/bench_packing.py --procs 1 2 4 8 --steps 300 2>&1 | tee "$out/bench_packing.txt"
section "packing different configs in one trial (configs x rounds per hour)"
timeout 90 python3 benchmarks/bench_pack.py --device cuda --models lenet_300_100 --ks 1 4 16 64 --rounds 2 \
  --iterations 500 --json "$out/bench_pack_lenet.json" 2>&1 | tee "$out/bench_pack_lenet.txt"
timeout 90 python3 benchmarks/bench_pack.py --device cuda --models conv4 resnet20 --ks 1 4 16 --rounds 2 \
  --iterations 100 --json "$out/bench_pack_conv.json" 2>&1 | tee "$out/bench_pack_conv.txt"
section "a real trial on the GPU (MNIST-1D, 3 rounds, 4 replicates)"
timeout 60 python3 -m lth_sweep.cli run sweeps/experiments/mnist1d_mlp.yaml --set device=cuda \
  --set prune.rounds=3 --set replicates=4 --out /tmp/lth_gpu_trial 2>&1 | tee "$out/trial.txt"
