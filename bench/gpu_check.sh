#!/usr/bin/env bash
# Every GPU check the project has, in one run; figures land in $OUT (device tool) or bench/results.
# On a GPU machine without optuna/ptflops/plotly, carry them as wheels in .whl/ (see README).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results}"
mkdir -p "$out"
log="$out/gpu_check.txt"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
{
  echo "== device"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  echo "== CUDA exactness (float64, per-example reference)"
  python3 -m pytest -q -p no:cacheprovider tests/test_layers.py 2>&1 | tail -3
  echo "== CondConv layer bench, fp32"
  python3 bench/condconv_layer.py --device cuda --json "$out/condconv_layer_cuda_fp32.json"
  echo "== CondConv layer bench, bf16 autocast"
  python3 bench/condconv_layer.py --device cuda --bf16 --json "$out/condconv_layer_cuda_bf16.json"
} 2>&1 | tee "$log"
