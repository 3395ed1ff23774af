#!/usr/bin/env bash
# The first command on a fresh machine: install, build, then train and sample the demo model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
build/examples/tiny_lm --steps "${STEPS:-600}"
