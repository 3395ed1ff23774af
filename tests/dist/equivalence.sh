#!/bin/sh
# Data-parallel runs of configs/tiny.yaml that must be the same run as one process with the same
# global batch (issue 8): 2 ranks x 4 (several gradient buckets), 1 rank x 4 x 2 accumulation,
# ZeRO-1, and checkpoints resumed across world sizes (2 -> 1, 1 -> 2, ZeRO 2 -> 1, 1 -> ZeRO 2);
# SFT fine-tuning of stories260K (all weights, and LoRA adapters), 2 ranks x 2 against 1 rank x 4;
# and GRPO, 2 ranks x 2 prompts against 1 rank x 4.
# usage: equivalence.sh LLM_DATA LLM_TRAIN DIST_COMPARE_RUNS SOURCE_DIR LLM_FINETUNE
set -eu
data_tool=$1 train=$2 compare=$3 src=$4 finetune=$5
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
# SFT: digit strings and their reversals, formatted with the chat template, packed rows.
awk 'BEGIN { for (n = 100; n < 164; ++n) { s = n ""; r = ""; for (i = length(s); i > 0; --i) r = r substr(s, i, 1)
                printf "{\"prompt\": \"reverse %s\", \"completion\": \"%s\"}\n", s, r } }' > "$d/sft.jsonl"
sft() {  # sft DIR [launcher...] -- [--set ...]
  dir=$1; shift
  launcher=""
  while [ "$1" != "--" ]; do launcher="$launcher $1"; shift; done
  shift
  $launcher "$finetune" --config "$src/configs/sft-chat.yaml" --set model.init_from="$src/tests/fixtures/stories260K/stories260K.bin" \
    --set data.tokenizer="$src/data/assets/stories260K/tok512.model" --set data.train="$d/sft.jsonl" \
    --set finetune.val_fraction=0 --set finetune.chat_template=false --set train.seq_len=64 --set train.grad_accum=1 --set train.max_steps=6 \
    --set train.eval_interval=0 --set optim.lr=1e-3 --set optim.warmup_steps=0 --set checkpoint.dir="$d/$dir" \
    --set checkpoint.interval=3 "$@" > "$d/$dir.log" 2>&1 || { echo "run $dir failed:"; cat "$d/$dir.log"; exit 1; }
}
sft sft_one_x4 -- --set train.batch_size=4 --set lora.rank=0
sft sft_two_x2 $mpi -- --set train.batch_size=2 --set lora.rank=0
# LoRA (the recipe's adapters) without adapter dropout, whose masks depend on the per-rank batch shape.
sft lora_one_x4 -- --set train.batch_size=4 --set lora.dropout=0
sft lora_two_x2 $mpi -- --set train.batch_size=2 --set lora.dropout=0
# GRPO: 2 ranks x 2 prompts sample, score and update exactly as 1 rank x 4 prompts (each completion
# samples from its global stream; gradients and statistics averaged over the ranks).
grpo() {  # grpo DIR [launcher...] -- [--set ...]
  dir=$1; shift
  launcher=""
  while [ "$1" != "--" ]; do launcher="$launcher $1"; shift; done
  shift
  $launcher "$finetune" --config "$src/configs/grpo-gsm8k.yaml" --set model.init_from="$src/tests/fixtures/stories260K/stories260K.bin" \
    --set data.tokenizer="$src/data/assets/stories260K/tok512.model" --set data.train="$d/sft.jsonl" --set data.val= \
    --set finetune.prompt_key=prompt --set finetune.chat_template=false --set reward.exact_number=0 --set reward.length_max=0 \
    --set reward.regex=e \
    --set grpo.group_size=2 --set grpo.max_new_tokens=4 --set grpo.temperature=1.5 --set train.eval_interval=0 \
    --set train.seq_len=64 --set train.max_steps=3 --set optim.lr=1e-4 --set checkpoint.dir="$d/$dir" "$@" > "$d/$dir.log" 2>&1 ||
    { echo "run $dir failed:"; cat "$d/$dir.log"; exit 1; }
}
grpo grpo_one_x4 -- --set grpo.prompts_per_step=4 --set train.batch_size=8
grpo grpo_two_x2 $mpi -- --set grpo.prompts_per_step=2 --set train.batch_size=4
grep -q "reward 0.[0-9]*[1-9][0-9]* ± 0.[0-9]*[1-9]" "$d/grpo_two_x2.log" || { echo "GRPO runs without a reward signal:"; cat "$d/grpo_two_x2.log"; exit 1; }
grep -q "dist: 2 ranks over mpi, [0-9]* gradient bucket" "$d/two_x4.log" || { cat "$d/two_x4.log"; exit 1; }
grep -q "resume: .*ckpt_00000010.h5 at step 10" "$d/one_to_zero.log" || { cat "$d/one_to_zero.log"; exit 1; }
status=0
for other in two_x4 one_x4_accum2 two_x4_zero two_to_one one_to_two zero_to_one one_to_zero; do
  "$compare" "$d/one_x8" "$d/$other" --rtol 1e-5 || status=1
done
"$compare" "$d/two_x4" "$d/two_x4_zero" --rtol 1e-5 || status=1  # ZeRO-1 against plain data parallelism
"$compare" "$d/sft_one_x4" "$d/sft_two_x2" --rtol 1e-5 || status=1
"$compare" "$d/lora_one_x4" "$d/lora_two_x2" --rtol 1e-5 || status=1
"$compare" "$d/grpo_one_x4" "$d/grpo_two_x2" --rtol 1e-5 || status=1
grep -q "adapter: .*lora_two_x2/adapter" "$d/lora_two_x2.log" || { cat "$d/lora_two_x2.log"; exit 1; }
exit $status
