#!/bin/bash
# Convert and verify every checkpoint of a training run on a Slurm array: each task takes its
# share of the sorted job list, writes its own summary, and a last step merges them. The share
# comes from the array's variables for a range or a step (--array=0-3, --array=0-6:2); a list
# cannot number the shares, so every task of one refuses before doing anything. To rerun some
# tasks, give the number of shares N and the tasks' ids 0..N-1: each then does exactly its share.
#
#   sbatch examples/slurm-array.sh                               # 4 tasks, 4 CPUs and 24G each
#   sbatch --cpus-per-task=2 --mem=8G examples/slurm-array.sh    # smaller nodes: override on the line
#   N=4 sbatch --array=1,3 examples/slurm-array.sh               # rerun tasks 1 and 3 of 4
#   qwen2llama batch --summarize summaries/*.json --junit batch.xml   # once they are done
#
# The log goes to the folder sbatch is run from (Slurm opens it before the script runs, so it
# cannot be in a folder the script would create); %A is the array's job id, %a the task.
#SBATCH --job-name=qwen2llama
#SBATCH --array=0-3
#SBATCH --cpus-per-task=4
#SBATCH --mem=24G
#SBATCH --time=04:00:00
#SBATCH --output=%x-%A_%a.log
set -euo pipefail

N=${N:-}                                  # the number of shares, when rerunning some tasks
RUNS=${RUNS:-/data/runs}                  # runs/<name>/checkpoint-<step>/ written by the HF Trainer
OUT=${OUT:-/data/llama}                   # outputs: <run>--checkpoint-<step>/ (and .verify.json beside each)
BASE=${BASE:-Qwen/Qwen-7B-Chat}           # supplies qwen.tiktoken, generation_config.json, LICENSE
ARGS=${ARGS:-}                            # more batch options (--quick, --dtype bfloat16, ...)
mkdir -p summaries

# Every task sees the same sorted job list and keeps every N-th job: together they cover each
# job once. A task that is requeued skips what is already converted and verified.
qwen2llama batch "$RUNS/*/checkpoint-*" --out-root "$OUT" --base "$BASE" --jobs 2 \
    ${N:+--shard "$SLURM_ARRAY_TASK_ID/$N"} --summary "summaries/shard-${SLURM_ARRAY_TASK_ID}.json" $ARGS
