#!/usr/bin/env bash
# Decoding speed of the two reference shapes (random weights, batch 1, CPU), fp32 and q8 (Q8_0):
#   scripts/bench_generate.sh [--json] [--threads N]
# runs `build/tools/llm-bench generate --shape llama-110m` and `--shape gpt2-124m`, each with fp32 and
# with --quantize q8, on all of the machine's threads (nproc; --threads N overrides): a 128-token
# prompt then 128 greedy tokens (median of 3 runs). Each prints prompt tokens/s, decode tokens/s,
# time to first token, and the weight bandwidth decoding reaches against the machine's read
# bandwidth. --json prints one JSON line per run instead. Each run takes roughly 10 s.
# Needs a build: cmake --build build --target llm-bench (LLM_BUILD_DIR=other/dir picks another build).
set -euo pipefail
cd "$(dirname "$0")/.."
bench="${LLM_BUILD_DIR:-build}/tools/llm-bench"
threads="$(nproc)"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --json) args+=(--json) ;;
    --threads)
      [ $# -ge 2 ] && [[ "$2" =~ ^[1-9][0-9]*$ ]] || { echo "error: scripts/bench_generate.sh: --threads: expected a positive integer" >&2; exit 2; }
      threads="$2"; shift ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: scripts/bench_generate.sh: unknown argument '$1' (usage: [--json] [--threads N])" >&2; exit 2 ;;
  esac
  shift
done
[ -x "$bench" ] || { echo "error: $bench: not built (cmake --build ${LLM_BUILD_DIR:-build} --target llm-bench)" >&2; exit 2; }
for shape in llama-110m gpt2-124m; do
  "$bench" generate --shape "$shape" --threads "$threads" ${args[@]+"${args[@]}"}
  "$bench" generate --shape "$shape" --quantize q8 --threads "$threads" ${args[@]+"${args[@]}"}
done
