#!/bin/sh
# Data-parallel runs of configs/tiny.yaml that must be the same run as one process with the same
# global batch (issue 8): 2 ranks x 4 (several gradient buckets), 1 rank x 4 x 2 accumulation,
# ZeRO-1, and checkpoints resumed across world sizes (2 -> 1, 1 -> 2, ZeRO 2 -> 1, 1 -> ZeRO 2).
# usage: equivalence.sh LLM_DATA LLM_TRAIN DIST_COMPARE_RUNS SOURCE_DIR
set -eu
data_tool=$1 train=$2 compare=$3 src=$4
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
export OMP_NUM_THREADS=1
mpi="mpirun --allow-run-as-root --oversubscribe -np 2"
"$data_tool" prepare --tokenizer byte --input "$src/data/assets/tinyshakespeare/input.txt" --out "$d/data" >/dev/null 2>&1
run() {  # run DIR [launcher...] -- [--set ...]: trains 20 steps into DIR, checkpoints at 10 and 20
  dir=$1; shift
  launcher=""
  while [ "$1" != "--" ]; do launcher="$launcher $1"; shift; done
  shift
  $launcher "$train" --config "$src/configs/tiny.yaml" --set data.train="$d/data" --set checkpoint.dir="$d/$dir" \
    --set checkpoint.interval=10 --set checkpoint.keep_last=5 --set train.eval_interval=0 "$@" > "$d/$dir.log" 2>&1 ||
    { echo "run $dir failed:"; cat "$d/$dir.log"; exit 1; }
}
resume_from() {  # resume_from SRC DIR: DIR starts with SRC's step-10 checkpoint
  mkdir -p "$d/$2" && cp "$d/$1/ckpt_00000010.h5" "$d/$2/"
}
run one_x8 -- --set train.batch_size=8
run two_x4 $mpi -- --set train.batch_size=4 --set dist.bucket_mb=0.01
run one_x4_accum2 -- --set train.batch_size=4 --set train.grad_accum=2
run two_x4_zero $mpi -- --set train.batch_size=4 --set dist.zero=1
resume_from two_x4 two_to_one && run two_to_one -- --set train.batch_size=8 --resume auto
resume_from one_x8 one_to_two && run one_to_two $mpi -- --set train.batch_size=4 --resume auto
resume_from two_x4_zero zero_to_one && run zero_to_one -- --set train.batch_size=8 --resume auto
resume_from one_x8 one_to_zero && run one_to_zero $mpi -- --set train.batch_size=4 --set dist.zero=1 --resume auto
grep -q "dist: 2 ranks over mpi, [0-9]* gradient bucket" "$d/two_x4.log" || { cat "$d/two_x4.log"; exit 1; }
grep -q "resume: .*ckpt_00000010.h5 at step 10" "$d/one_to_zero.log" || { cat "$d/one_to_zero.log"; exit 1; }
status=0
for other in two_x4 one_x4_accum2 two_x4_zero two_to_one one_to_two zero_to_one one_to_zero; do
  "$compare" "$d/one_x8" "$d/$other" --rtol 1e-5 || status=1
done
exit $status
