#!/usr/bin/env bash
# Every GPU check and benchmark in one go, for a machine with torch only (no Ray, Optuna, W&B).
# Usage: bash benchmarks/run_gpu.sh OUT_DIR
# A GPU box without pydantic, PyYAML or click (and without network) gets them from the wheels in .gpu_wheels/
# (git-ignored; carry it), made with
#   for v in 3.11 3.12 3.13; do pip download pydantic==2.13.4 pydantic-core==2.46.4 annotated-types \
#     typing-inspection typing-extensions pyyaml click --python-version $v --only-binary=:all: \
#     --platform manylinux2014_x86_64 -d .gpu_wheels --no-deps; done
# (pydantic-core matching pydantic), and the MNIST-1D cache copied to .gpu_wheels/data/mnist1d/mnist1d.npz
# (mnist1d itself needs scipy and matplotlib to generate it).
set -u
out=${1:-gpu_results}; mkdir -p "$out"
cd "$(dirname "$0")/.."
missing=$(python3 -c "import importlib.util as u; print(' '.join(p for m, p in (('pydantic', 'pydantic'),
  ('yaml', 'pyyaml'), ('click', 'click')) if u.find_spec(m) is None))")
if [ -n "$missing" ] && [ -d .gpu_wheels ]; then
  python3 -m pip install -q --no-index --find-links .gpu_wheels $missing 2>&1 | tail -2
fi
data_root=$([ -f .gpu_wheels/data/mnist1d/mnist1d.npz ] && echo .gpu_wheels/data || echo "~/.cache/lth_sweep/data")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
section() { echo; echo "=== $1"; }
# Most wanted first; the timeouts add up to 515 s, so the whole script fits one 600 s device call. Every JSON is
# written after each row, so a check cut short still leaves its rows.
section "correctness: graph vs eager, stacked vs alone, packed vs alone, masks"
timeout 100 python3 benchmarks/gpu_checks.py 2>&1 | tee "$out/gpu_checks.txt"
section "packing different configs in one trial (configs x rounds per hour; issue 11: LeNet K=64 >= 10x)"
timeout 150 python3 benchmarks/bench_pack.py --device cuda --models lenet_300_100 --ks 1 16 64 --rounds 2 \
  --iterations 500 --json "$out/bench_pack_lenet.json" 2>&1 | tee "$out/bench_pack_lenet.txt"
timeout 100 python3 benchmarks/bench_pack.py --device cuda --models conv4 resnet20 --ks 1 4 16 --rounds 2 \
  --iterations 100 --json "$out/bench_pack_conv.json" 2>&1 | tee "$out/bench_pack_conv.txt"
section "a real trial on the GPU (MNIST-1D, 3 rounds, 4 replicates)"
timeout 45 python3 -m lth_sweep.cli run sweeps/experiments/mnist1d_mlp.yaml --set device=cuda \
  --set "dataset.root=$data_root" --set prune.rounds=3 --set replicates=4 --out /tmp/lth_gpu_trial 2>&1 | tee "$out/trial.txt"
section "engine vs reference loop"
timeout 120 python3 benchmarks/bench_engine.py --device cuda --resnet-ks 8 32 --json "$out/bench_engine.json" 2>&1 | tee "$out/bench_engine.txt"
# Not run by default (measured on an H200 on 2026-11-26, RESULTS.md): P trial processes sharing one GPU,
#   timeout 110 python3 benchmarks/bench_packing.py --procs 1 2 4 8 --steps 300
