#!/usr/bin/env bash
# The GPU config (`cifar10_resnet18`) end to end on one GPU, shortened to minutes: random CIFAR-10 and
# Tiny-ImageNet files in their real formats (no download), 2 IRP rounds of 2 epochs, one compact scorer,
# a small matrix of 1-epoch cells on both GPU targets. Checks the pipeline's GPU path (Ray Train with
# use_gpu, cells as Ray tasks with num_gpus, MLflow), not accuracy.
#
#   benchmarks/gpu_pipeline.sh [OUT_DIR [--set KEY=VALUE ...]]
#
# OUT_DIR (default /tmp/gpu-pipeline) gets the log and the report; extra arguments go to `autosparse run`.
# CIFAR10_PER_BATCH (2000, x5 training images) and TINY_PER_CLASS (10, x200) size the random data;
# PYTHON (python3) is the interpreter that has autosparse.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:-/tmp/gpu-pipeline}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$out"
"${PYTHON:-python3}" tests/datafiles.py "$scratch/data" --cifar10-per-batch "${CIFAR10_PER_BATCH:-2000}" \
  --tiny-imagenet-per-class "${TINY_PER_CLASS:-10}"
"${PYTHON:-python3}" -m autosparse.cli run cifar10_resnet18 --workspace "$scratch/ws" --no-progress \
  --set data.data_root="$scratch/data" \
  --set irp.rounds=2 --set irp.train.epochs=2 --set "irp.train.milestones=[1]" \
  --set "scorers=[{name: conditional, epochs: 2, rows_per_epoch: 200000, batch_size: 16384, steps: 5}]" \
  --set matrix.train.epochs=1 --set "matrix.train.milestones=[]" --set "matrix.seeds=[0]" \
  --set "matrix.sparsities=[0.98]" --set "matrix.variants=[shuffle]" \
  --set "matrix.methods=[random, snip, synflow, autos:conditional@alloc:learned]" \
  --set matrix.irp_reference=false "${@:2}" 2>&1 | tee "$out/pipeline_log.txt"
cp "$scratch"/ws/report/*/report.md "$out/"
