#!/bin/sh
# llm-train on the GPU under mpirun -np 1 (NCCL): plain data parallelism and ZeRO-1 through the
# trainer must be the run one process makes without a launcher (losses, weights, moments within
# 1e-6), and a ZeRO-1 run resumed from the plain run's step-10 checkpoint must continue it (the
# moments scattered to the device shard and gathered back for the last checkpoint).
# The GEMM is pinned (kernels.matmul: auto times kernels per process and may settle differently).
# scripts/gpu_check.sh runs it; DEVICE=cpu runs the same on the CPU (mpi), to check the script. It
# prints the op profile of one data-parallel step.
# usage: gpu_train.sh LLM_DATA LLM_TRAIN DIST_COMPARE_RUNS SOURCE_DIR
set -eu
data_tool=$1 train=$2 compare=$3 src=$4
device=${DEVICE:-cuda}
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
mpi="mpirun --allow-run-as-root --oversubscribe -np 1"
"$data_tool" prepare --tokenizer byte --input "$src/data/assets/tinyshakespeare/input.txt" --out "$d/data" >/dev/null 2>&1
run() {  # run DIR [launcher...] -- [--set ...]: trains 20 steps into DIR, checkpoints at 10 and 20
  dir=$1; shift
  launcher=""
  while [ "$1" != "--" ]; do launcher="$launcher $1"; shift; done
  shift
  $launcher "$train" --config "$src/configs/tiny.yaml" --set data.train="$d/data" --set checkpoint.dir="$d/$dir" \
    --set checkpoint.interval=10 --set checkpoint.keep_last=5 --set train.eval_interval=0 --set train.device="$device" \
    --set kernels.matmul=native "$@" > "$d/$dir.log" 2>&1 || { echo "run $dir failed:"; cat "$d/$dir.log"; exit 1; }
}
run single --
run nccl_plain $mpi -- --set log.profile_step=12
run nccl_zero $mpi -- --set dist.zero=1
mkdir -p "$d/zero_resumed" && cp "$d/single/ckpt_00000010.h5" "$d/zero_resumed/"
run zero_resumed $mpi -- --set dist.zero=1 --resume auto
grep -q "resume: .*ckpt_00000010.h5 at step 10" "$d/zero_resumed.log" || { cat "$d/zero_resumed.log"; exit 1; }
status=0
for other in nccl_plain nccl_zero zero_resumed; do
  "$compare" "$d/single" "$d/$other" --rtol 1e-6 --moments-rtol 1e-5 || status=1
done
# Where a data-parallel step's time went (the op profile of step 12: all-reduce wait included).
sed -n '/time per op/,/ total /p' "$d/nccl_plain.log"
exit $status
