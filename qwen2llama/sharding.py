"""Which share of a batch's jobs this process takes: `--shard I/N`, or a Slurm array's or a
Kubernetes Indexed Job's variables. N processes with indexes 0..N-1 cover every job exactly once;
variables that cannot number the shards are refused before any work, with the fix."""
from __future__ import annotations

import os
import re

from .errors import InputError

SHARD_FIX = ("use a range or a step (--array=0-3, --array=0-6:2), or pass the share yourself: "
             'qwen2llama batch ... --shard "$SLURM_ARRAY_TASK_ID/N" with N the number of shares and task ids '
             "0..N-1 (examples/slurm-array.sh: N=4 sbatch --array=1,3 ...)")


def _env_int(env, name: str, default: int | None = None, low: int = 0) -> int:
    value = env.get(name)
    if value in (None, ""):
        if default is None:
            raise InputError(f"{name} is not set", fix=SHARD_FIX)
        return default
    if not re.fullmatch(r"\d+", value.strip()) or int(value) < low:
        raise InputError(f"{name}={value!r}: expected a whole number of at least {low}", fix=SHARD_FIX)
    return int(value)


def shard_from_env(env=os.environ) -> tuple[int, int] | None:
    """(index, count) from a Slurm array job or a Kubernetes Indexed Job, if this is one. A Slurm
    array whose task ids are not the plain range MIN, MIN+STEP, ..., MAX (a list like 0,2,4, or a
    retry of some tasks) cannot number the shards: refused before any work, with the fix."""
    if "SLURM_ARRAY_TASK_ID" in env:
        task = _env_int(env, "SLURM_ARRAY_TASK_ID")
        low = _env_int(env, "SLURM_ARRAY_TASK_MIN", 0)
        step = _env_int(env, "SLURM_ARRAY_TASK_STEP", 1, low=1)
        count = env.get("SLURM_ARRAY_TASK_COUNT") and _env_int(env, "SLURM_ARRAY_TASK_COUNT", low=1)
        high = _env_int(env, "SLURM_ARRAY_TASK_MAX", low + ((count or 1) - 1) * step)
        count = count or (high - low) // step + 1
        if high < low or (high - low) % step or (high - low) // step + 1 != count or task < low or \
                task > high or (task - low) % step:
            raise InputError(f"the Slurm array is not a plain range (task {task}, MIN {low}, MAX {high}, "
                             f"STEP {step}, COUNT {count}): its task ids do not number {count} shards",
                             fix=SHARD_FIX)
        return (task - low) // step, count
    if "JOB_COMPLETION_INDEX" in env:
        if "QWEN2LLAMA_SHARD_COUNT" not in env:
            raise InputError("JOB_COMPLETION_INDEX is set but not QWEN2LLAMA_SHARD_COUNT",
                             fix="set QWEN2LLAMA_SHARD_COUNT to the Job's completions (see examples/)")
        index, count = _env_int(env, "JOB_COMPLETION_INDEX"), _env_int(env, "QWEN2LLAMA_SHARD_COUNT", low=1)
        if index >= count:
            raise InputError(f"JOB_COMPLETION_INDEX={index} is not below QWEN2LLAMA_SHARD_COUNT={count}",
                             fix="set QWEN2LLAMA_SHARD_COUNT to the Job's completions")
        return index, count
    return None


def parse_shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise InputError(f"--shard {text!r}: expected I/N with 0 <= I < N", fix="e.g. --shard 0/4")
    return int(m.group(1)), int(m.group(2))


def take_shard(jobs: list, index: int, count: int) -> list:
    """Every count-th job by output path, starting at index: N shards cover each job exactly once."""
    if not 0 <= index < count:
        raise InputError(f"shard {index} of {count} does not exist", fix="0 <= index < count")
    ordered = sorted(jobs, key=lambda j: str(os.path.abspath(j.out)))
    return ordered[index::count]
