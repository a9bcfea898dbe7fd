"""What the runtime probes are asked and what they answer, so that each runtime runs in its own
environment (its own transformers, torch or none) and the comparison runs in ours.

Request (JSON): {"folders": {label: path}, "texts": [str], "prompts": [[id]], "greedy": n,
"chat": [{"role", "content"}] | null}. Each probe writes `result.json` into the out folder:
{"runtime", "version", "ids": [[id] per text], "chat_ids": [id] | null, "folders": {label:
{"greedy": [[id] per prompt], "logits": true | "logprobs": [[{id: logprob}] per position]}}}
and, when it has full logits, `{label}-{k}.npy` ([tokens, vocab] float32) per prompt.
"""
from __future__ import annotations

import json
from pathlib import Path


def read_request(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def write_result(out: str | Path, result: dict) -> None:
    Path(out, "result.json").write_text(json.dumps(result))
