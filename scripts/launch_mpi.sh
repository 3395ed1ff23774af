#!/usr/bin/env bash
# Data-parallel llm-train over Open MPI, on one machine or several.
#
#   scripts/launch_mpi.sh -n 2 --threads 1 -- --config configs/tiny.yaml            # 2 ranks here
#   scripts/launch_mpi.sh -n 16 --hostfile hosts.txt -- --config configs/gpt2-124m.yaml --resume auto
#
# A hostfile lists the machines and how many ranks each takes (same build path on each, and
# passwordless ssh between them):
#   node01 slots=8
#   node02 slots=8
# Each rank gets --threads cores (OMP_NUM_THREADS), bound to them. On GPU nodes use one rank per GPU
# and `--set train.device=cuda` (dist.backend auto then means NCCL, each rank on the GPU of its local
# rank); NCCL_SOCKET_IFNAME, NCCL_IB_HCA and NCCL_DEBUG are passed through when set. Everything after `--` goes to llm-train. LLM_TRAIN overrides the binary.
set -euo pipefail
ranks=2 hostfile="" threads=""
while [ $# -gt 0 ]; do
  case "$1" in
    -n) ranks=$2; shift 2 ;;
    --hostfile) hostfile=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "error: launch_mpi.sh: unknown argument '$1' (llm-train arguments go after --)" >&2; exit 2 ;;
  esac
done
train=${LLM_TRAIN:-"$(cd "$(dirname "$0")/.." && pwd)/build/tools/llm-train"}
[ -x "$train" ] || { echo "error: launch_mpi.sh: $train is not built (cmake --build build --target llm-train)" >&2; exit 2; }
args=(-np "$ranks")
[ -n "$hostfile" ] && args+=(--hostfile "$hostfile")
if [ -n "$threads" ]; then
  args+=(--map-by "slot:PE=$threads" --bind-to core -x "OMP_NUM_THREADS=$threads")
else
  args+=(-x OMP_NUM_THREADS)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
for v in NCCL_SOCKET_IFNAME NCCL_IB_HCA NCCL_DEBUG; do
  [ -n "${!v:-}" ] && args+=(-x "$v")
done
[ "$(id -u)" = 0 ] && args+=(--allow-run-as-root)
exec mpirun "${args[@]}" "$train" "$@"
