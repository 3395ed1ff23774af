#!/usr/bin/env bash
# Serving throughput of llm-serve with the small stories260K model (tests/fixtures/stories260K):
#   scripts/bench_serve.sh [--json] [--requests N] [--max-tokens M] [--threads T]
# For continuous batching (--max-batch 16) and one request at a time (--max-batch 1), starts llm-serve
# on a free loopback port and runs llm-serve-bench with 1, 4 and 16 concurrent clients: N streamed
# greedy completions of up to M tokens each (defaults 48 and 64), reporting requests/s, generated
# tokens/s and time to first token. Needs a build: cmake --build build --target llm-serve llm-serve-bench
# (LLM_BUILD_DIR=other/dir picks another build). Client and server share the machine's cores.
set -euo pipefail
cd "$(dirname "$0")/.."
build="${LLM_BUILD_DIR:-build}"
requests=48
max_tokens=64
threads=0
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --json) args+=(--json) ;;
    --requests|--max-tokens|--threads)
      [ $# -ge 2 ] && [[ "$2" =~ ^[0-9]+$ ]] || { echo "error: scripts/bench_serve.sh: $1: expected a number" >&2; exit 2; }
      case "$1" in --requests) requests="$2" ;; --max-tokens) max_tokens="$2" ;; --threads) threads="$2" ;; esac
      shift ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: scripts/bench_serve.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
for tool in llm-serve llm-serve-bench; do
  [ -x "$build/tools/$tool" ] || { echo "error: $build/tools/$tool: not built (cmake --build $build --target $tool)" >&2; exit 2; }
done

log="$(mktemp)"
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null; rm -f "$log"; }
trap cleanup EXIT

for batch in 16 1; do
  "$build/tools/llm-serve" --model tests/fixtures/stories260K/stories260K.bin \
      --tokenizer data/assets/stories260K/tok512.model --port 0 --max-batch "$batch" --threads "$threads" 2> "$log" &
  server=$!
  port=""
  for _ in $(seq 1 200); do
    port="$(sed -n 's/.*on http:\/\/127\.0\.0\.1:\([0-9]*\),.*/\1/p' "$log")"
    [ -n "$port" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.05
  done
  [ -n "$port" ] || { echo "error: llm-serve did not start" >&2; cat "$log" >&2; exit 1; }
  [ ${#args[@]} -eq 0 ] && echo "== llm-serve --max-batch $batch (stories260K, $requests requests of up to $max_tokens tokens)"
  for clients in 1 4 16; do
    "$build/tools/llm-serve-bench" --port "$port" --clients "$clients" --requests "$requests" \
        --max-tokens "$max_tokens" ${args[@]+"${args[@]}"}
  done
  kill "$server"
  wait "$server" 2>/dev/null || true
  server=""
done
