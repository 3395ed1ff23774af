#!/usr/bin/env bash
# The first command on a fresh machine: install what is missing, build, prepare Tiny Shakespeare as
# bytes, train the shakespeare-char model for a few minutes (STEPS, default 600: about 3 minutes on 2
# cores) and print a generated sample.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${STEPS:-600}
scripts/setup.sh
build/tools/llm-data prepare --tokenizer byte --input data/assets/tinyshakespeare/input.txt \
  --out out/data/shakespeare-char
build/tools/llm-train --config configs/shakespeare-char.yaml --set train.max_steps="$steps" \
  --set train.sample_interval="$steps" --set train.eval_interval=$((steps / 2)) --set checkpoint.dir=out/quickstart
echo "quickstart: checkpoint and metrics in out/quickstart/ (plot: /usr/bin/python3 scripts/plot_metrics.py out/quickstart/metrics.jsonl)"
