#!/usr/bin/env bash
# Issue 12's GPU figures in one run (for a machine with an NVIDIA GPU; never in tests or CI):
# detect() latency at 1024² in float32 and mixed precision, training at 1024² with batch 8 in
# mixed_float16, and the input pipeline's batches/s beside that step. JSON lines on stdout;
# images/s = batch / step_median_s. detectron2 publishes 0.043 s/img inference and ~7.8 img/s
# training per V100 for R50-FPN.
#     bash benchmarks/gpu_check.sh [python]
set -uo pipefail
cd "$(dirname "$0")/.."
py=${1:-python}
$py -c "import tensorflow as tf; print({'gpus': [d.name for d in tf.config.list_physical_devices('GPU')]})"
for precision in None mixed_float16 mixed_bfloat16; do
    $py benchmarks/bench_model.py --case detect_r50_1024 --repeat 10 --precision $precision
done
$py benchmarks/bench_model.py --case train_r50_8x1024 --repeat 5 --precision mixed_float16
$py benchmarks/bench_pipeline.py --configs 8x1024 --workers 2 4 8 --batches 8 --steps 4 \
    --precision mixed_float16
