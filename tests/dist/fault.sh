#!/bin/sh
# A rank that stops answering (SIGSTOP) or dies (SIGKILL) mid-run: the job must end within a bounded
# time with a message naming rank 1, and the last checkpoint must still load and resume.
# usage: fault.sh LLM_DATA LLM_TRAIN SOURCE_DIR STOP|KILL
set -u
data_tool=$1 train=$2 src=$3 sig=$4
d=$(mktemp -d)
victim=""
trap 'kill -KILL $victim 2>/dev/null; rm -rf "$d"' EXIT
export OMP_NUM_THREADS=1
"$data_tool" prepare --tokenizer byte --input "$src/data/assets/tinyshakespeare/input.txt" --out "$d/data" >/dev/null 2>&1 || exit 1
common="--config $src/configs/tiny.yaml --set data.train=$d/data --set checkpoint.dir=$d/run --set train.eval_interval=0"
mpirun --allow-run-as-root --oversubscribe -np 2 "$train" $common --set train.batch_size=4 --set train.max_steps=1000000 \
  --set checkpoint.interval=20 --set dist.timeout_s=5 > "$d/log" 2>&1 &
launcher=$!
for _ in $(seq 600); do ls "$d"/run/ckpt_*.h5 >/dev/null 2>&1 && break; sleep 0.1; done
sleep 0.3
for p in /proc/[0-9]*; do  # rank 1 of this run: its command line names this run's directory
  tr '\0' '\n' < $p/cmdline 2>/dev/null | grep -qx "checkpoint.dir=$d/run" &&
    tr '\0' '\n' < $p/environ 2>/dev/null | grep -qx OMPI_COMM_WORLD_RANK=1 && victim=${p#/proc/}
done
[ -n "$victim" ] || { echo "no rank 1 found"; cat "$d/log"; exit 1; }
start=$(date +%s)
kill -$sig $victim
wait $launcher
rc=$?
elapsed=$(( $(date +%s) - start ))
cat "$d/log" | grep -v '^step '
echo "launcher exit code $rc after ${elapsed}s"
[ $rc -ne 0 ] || { echo "FAIL: the job did not fail"; exit 1; }
[ $elapsed -le 60 ] || { echo "FAIL: took ${elapsed}s"; exit 1; }
# A hung rank is found by the survivors' deadline; a dead one is reported by mpirun itself.
if [ "$sig" = STOP ]; then expect='error: .*no answer from rank 1 \(dead or hung\)'; else expect='process rank 1 .* exited on signal 9'; fi
grep -Eq "$expect" "$d/log" || { echo "FAIL: no message naming rank 1"; exit 1; }
last=$(ls "$d"/run/ckpt_*.h5 | tail -n 1)
step=$(basename "$last" .h5 | sed 's/ckpt_0*//')
"$train" $common --set train.batch_size=8 --set train.max_steps=$((step + 1)) --resume "$last" > "$d/resume.log" 2>&1 ||
  { echo "FAIL: the last checkpoint $last does not resume"; cat "$d/resume.log"; exit 1; }
echo "resumed from $(basename "$last") on 1 rank: $(grep -c '^step' "$d/resume.log") step(s)"
