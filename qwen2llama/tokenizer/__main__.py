"""`python -m qwen2llama.tokenizer VOCAB OUT CHAT MAX_LEN [EXTRA]`: write the tokenizer files, print
their figures as JSON. `convert` runs this as a child process beside the weight copy (pure
Python work in a thread would hold the GIL that the copy needs between system calls)."""
import json
import sys
from pathlib import Path

from . import read_tiktoken, write_tokenizer_files

if __name__ == "__main__":
    vocab, out, chat, max_len, *extra = sys.argv[1:6]
    stats = write_tokenizer_files(read_tiktoken(vocab, *extra), Path(out), chat=chat == "chat",
                                  model_max_length=int(max_len))
    print(json.dumps(stats))
