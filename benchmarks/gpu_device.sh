#!/usr/bin/env bash
# FlexPL's GPU checks in one command, for a machine with a CUDA GPU and no network (issue 26): the tests
# marked cuda, then benchmarks/gpu.py's cases on the GPU (fp32 and bf16) and on that machine's CPUs, and
# one FedAvg round of the full-width ResNet-18 over 100 clients.
#
#   bash benchmarks/gpu_device.sh --prepare   # here, with the network: fills .gpu/ (git-ignored)
#   bash benchmarks/gpu_device.sh             # there, from the repository root, with .gpu/ copied along
#
# --prepare downloads the wheels such a machine's Python (3.12, with torch, numpy, matplotlib, PyYAML,
# rich, scikit-learn and pytest, but not pydantic) lacks, and copies Fashion-MNIST's four files (30 MB).
# The run installs the wheels into a temporary folder, reads FlexPL from src/ (nothing is built), and
# writes what it prints to $OUT (default /tmp/flexpl-gpu): tests.txt and gpu.txt. Each step has its own
# time limit, 600 s in all (one command's limit on the device machine), the most telling step first;
# what a step printed is kept even when a later one is cut off. Ray's wheel (79 MB) is too large to
# carry there, so the ray executor is not timed on the GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS="pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0"

if [ "${1:-}" = --prepare ]; then
  set -e
  mkdir -p .gpu/whl .gpu/data
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  # shellcheck disable=SC2086
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/whl $WHEELS
  src=${FLEXPL_DATA:-/usr/share/datasets/fashion-mnist}
  [ -d "$src/fashion-mnist" ] && src="$src/fashion-mnist"
  cp "$src"/*-ubyte.gz .gpu/data/
  du -sh .gpu
  echo "prepared .gpu/: carry it to the GPU machine and run: bash benchmarks/gpu_device.sh"
  exit 0
fi

OUT=${OUT:-/tmp/flexpl-gpu}
mkdir -p "$OUT"
if ls .gpu/whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/flexpl-site \
    .gpu/whl/*.whl || exit 1
  export PYTHONPATH="/tmp/flexpl-site:$PWD/src:$PWD"
else
  export PYTHONPATH="$PWD/src:$PWD"
fi
if [ -d .gpu/data ]; then export FLEXPL_DATA="$PWD/.gpu/data"; fi
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
  echo "cpus: $(nproc)"
} 2>&1 | tee "$OUT/gpu.txt"

# the tests marked cuda, and the device plumbing's own
timeout 150 $PY -m pytest -p no:cacheprovider -q tests/unit/sim/test_cuda.py tests/unit/sim/test_device.py 2>&1 \
  | tee "$OUT/tests.txt"
# seconds per round, side by side (the second of two rounds; FLOPs and bytes must match across rows)
cases=fog-cifar,cnn-100,mlp-1000
timeout 120 $PY benchmarks/gpu.py --offline --device cuda --executors sequential --cases $cases --max-train 2000 2>&1 \
  | tee -a "$OUT/gpu.txt"
# one FedAvg round of the full-width ResNet-18 over 100 clients (cnn-100's devices, all 60,000 images at 3x32x32)
timeout 150 $PY benchmarks/gpu.py --offline --device cuda --executors sequential --cases resnet18-100 --max-train 60000 2>&1 \
  | tee -a "$OUT/gpu.txt"
timeout 60 $PY benchmarks/gpu.py --offline --device cuda --precision bf16 --executors sequential --cases fog-cifar,cnn-100 \
  --max-train 2000 2>&1 | tee -a "$OUT/gpu.txt"
# the same cases on that machine's CPUs, for the ratio (processes: one worker per two cores)
timeout 120 $PY benchmarks/gpu.py --offline --device cpu --executors sequential,processes --workers "$(( $(nproc) / 2 ))" \
  --cases $cases --max-train 2000 2>&1 | tee -a "$OUT/gpu.txt"
