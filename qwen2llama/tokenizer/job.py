"""The tokenizer files, written by a child process while the weights are copied (pure Python
work in a thread would hold the GIL that the copy needs between system calls)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ..errors import OutputError


class TokenizerJob:
    def __init__(self, vocab: Path, folder: Path, chat: bool, model_max_length: int,
                 extra: Path | None = None):
        self.folder = folder
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qwen2llama.tokenizer", str(vocab), str(folder),
             "chat" if chat else "base",
             str(model_max_length), *([str(extra)] if extra is not None else [])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self) -> dict:
        """The figures the child printed (for the manifest), once it has written the files."""
        out, err = self.proc.communicate()
        if self.proc.returncode:
            last = (err.strip().splitlines() or ["no message"])[-1]
            raise OutputError(f"writing the tokenizer files failed: {last}"[:400], path=self.folder,
                              fix="free disk space or choose another output folder (--debug for details)")
        return json.loads(out)

    def cancel(self) -> None:
        """Kill the child and wait for it (a no-op once it has exited)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
