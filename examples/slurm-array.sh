#!/bin/bash
# Convert and verify every checkpoint of a training run on a Slurm array: each task takes its
# share of the job list (qwen2llama reads SLURM_ARRAY_TASK_ID and the array's bounds itself),
# writes its own summary, and a last step merges them.
#
#   sbatch examples/slurm-array.sh             # 4 tasks
#   qwen2llama batch --summarize summaries/*.json --junit batch.xml   # once they are done
#
#SBATCH --job-name=qwen2llama
#SBATCH --array=0-3
#SBATCH --cpus-per-task=4
#SBATCH --mem=24G
#SBATCH --time=04:00:00
#SBATCH --output=logs/%x-%a.log
set -euo pipefail

RUNS=${RUNS:-/data/runs}                  # runs/<name>/checkpoint-<step>/ written by the HF Trainer
OUT=${OUT:-/data/llama}                   # outputs: <run>--checkpoint-<step>/ (and .verify.json beside each)
BASE=${BASE:-Qwen/Qwen-7B-Chat}           # supplies qwen.tiktoken, generation_config.json, LICENSE
mkdir -p summaries logs

# Every task sees the same sorted job list and keeps every N-th job: together they cover each
# job once. A task that is requeued skips what is already converted and verified.
qwen2llama batch "$RUNS/*/checkpoint-*" --out-root "$OUT" --base "$BASE" --jobs 2 \
    --summary "summaries/shard-${SLURM_ARRAY_TASK_ID}.json"
