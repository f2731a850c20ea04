#!/usr/bin/env bash
# Every GPU check the project has, in one run; figures land in $OUT (device tool) or bench/results.
# Usage: bash bench/gpu_check.sh [SECTION ...]
#   (default: all of tests layer paths latency train fmnist search reproducible study)
# On a GPU machine without optuna/ptflops/plotly, carry them as wheels in .whl/ (see README);
# Fashion-MNIST is read from .fmnist/ when present (else $CONDCONV_NAS_DATA / Debian's folder).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results}"
mkdir -p "$out" && out="$(cd "$out" && pwd)"  # absolute: the study file names it from elsewhere
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
data=(); [ -d .fmnist ] && data=(--data-dir .fmnist)
sections=("$@"); [ ${#sections[@]} -eq 0 ] && sections=(tests layer paths latency train fmnist search reproducible study)

tests() {
  echo "== tests on CUDA (layer exactness in float64 on cuda and cpu, model, train, path tuner)"
  python3 -m pytest -q -p no:cacheprovider tests/test_layers.py tests/test_train.py \
    tests/test_model.py tests/test_pathtune.py tests/test_latency.py tests/test_checkpoint.py 2>&1 | tail -1
}
layer() {
  for dt in fp32 bf16; do
    echo "== CondConv layer bench, $dt"
    python3 bench/condconv_layer.py --device cuda --min-time 0.1 $([ $dt = bf16 ] && echo --bf16) \
      --json "$out/condconv_layer_cuda_$dt.json"
  done
}
paths() {
  echo "== CondConv path autotuner vs the fastest path, 32 shapes outside the presets"
  python3 bench/path_choice.py --device cuda --min-time 0.1 --json "$out/path_choice_cuda.json" \
    | tail -1
}
latency() {
  echo "== latency command on the GPU: 8-expert EfficientNet-B0 beside its static twin"
  python3 -m condconv_nas.cli latency --preset condconv_efficientnet_b0_8e --device cuda --json \
    > "$out/latency_cuda_b0_8e.json" && tail -c 600 "$out/latency_cuda_b0_8e.json"
  python3 -m condconv_nas.cli latency --preset condconv_efficientnet_b0_8e_proxy32 --device cuda \
    --bf16 --channels-last | tail -6
}
train() {
  echo "== training throughput, eager"
  python3 bench/train_throughput.py --device cuda --json "$out/train_throughput_cuda.json"
  echo "== training throughput, torch.compile reduce-overhead (CUDA graphs)"
  python3 bench/train_throughput.py --device cuda --compile reduce-overhead \
    --json "$out/train_throughput_cuda_graphs.json"
}
fmnist() {
  echo "== Fashion-MNIST proxies, 6 epochs on the GPU"
  for p in mobilenet_v2_proxy28 efficientnet_b0_proxy28 condconv_efficientnet_b0_8e_proxy28; do
    echo "$p $(python3 -m condconv_nas.cli train --dataset fashion-mnist "${data[@]}" \
      --device cuda --eval-test --json --no-progress --preset $p --epochs 6)"
  done
}
search() {
  echo "== the quickstart study on the GPU: search, baselines, confirm, report, export (wall seconds)"
  local f=studies/gpu_quickstart.yaml
  sed -e 's/^name: .*/name: gpu_quickstart/' -e 's/^device: .*/device: cuda/' \
    -e 's/^workers: .*/workers: 1/' studies/quickstart.yaml > "$f"
  [ -d .fmnist ] && echo "data_dir: ../.fmnist" >> "$f"
  printf 'storage: %s\nartifacts: %s\n' "$out/gpu_quickstart.journal" \
    "$out/gpu_quickstart.artifacts" >> "$f"
  local t0; t0=$(date +%s)
  python3 -m condconv_nas.cli search "$f" | tail -2
  python3 -m condconv_nas.cli baselines "$f" | tail -2
  python3 -m condconv_nas.cli confirm "$f" | tail -2
  python3 -m condconv_nas.cli report "$f" -o "$out/gpu_quickstart.html"
  python3 -m condconv_nas.cli export "$f" -o "$out/gpu_quickstart_export" | tail -3
  echo "quickstart on the GPU: $(( $(date +%s) - t0 )) s"
}
reproducible() {
  echo "== a reproducible search twice on the GPU, 2 workers: the same parameters? (idle share)"
  { grep -v '^device:' studies/tiny.yaml; echo "device: cuda"; } > studies/gpu_tiny.yaml
  python3 bench/reproducible.py studies/gpu_tiny.yaml --workers 2 --twice
}
study() {
  echo "== 100-trial CIFAR-10 search: eager x1 against CUDA graphs x1/2/4 per GPU (issue goal 20 min)"
  python3 bench/gpu_study.py --json "$out/gpu_study.json" ${CONDCONV_NAS_DATA:+--data-dir "$CONDCONV_NAS_DATA"}
}
{
  echo "== device"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  for s in "${sections[@]}"; do "$s"; done
} 2>&1 | tee -a "$out/gpu_check.txt"
