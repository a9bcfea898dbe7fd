"""Probe: llama.cpp. Each folder goes through llama.cpp's own convert_hf_to_gguf.py (f32) and is
run by llama-cpp-python built from the same sdist, with an f32 KV cache; dumps its tokenizer's
ids, full logits and greedy continuations. Run with the project's environment after `make e2e`
built llama-cpp-python: python probe_llamacpp.py REQUEST OUT"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import llamacpp_source  # noqa: E402
from protocol import read_request, write_result  # noqa: E402

GGML_TYPE_F32 = 0


def main(request_path: str, out: str) -> None:
    from llama_cpp import Llama

    req = read_request(request_path)
    result = {"runtime": "llama.cpp (llama-cpp-python)", "version": llamacpp_source.VERSION, "folders": {}}
    for label, folder in req["folders"].items():
        gguf = Path(out, f"{label}.gguf")
        done = llamacpp_source.convert_to_gguf(Path(folder), gguf, "f32")
        if done.returncode:
            raise RuntimeError(f"convert_hf_to_gguf.py failed:\n{done.stderr[-3000:]}")
        n_ctx = req.get("max_model_len", 128)  # a --context T folder: T positions
        llm = Llama(str(gguf), n_ctx=n_ctx, n_batch=n_ctx, n_threads=2, logits_all=True, type_k=GGML_TYPE_F32,
                    type_v=GGML_TYPE_F32, verbose=False)
        if "ids" not in result:
            result["ids"] = [llm.tokenize(t.encode("utf-8"), add_bos=False,
                                          special=True) for t in req["texts"]]
            result["chat_ids"] = None  # llama.cpp applies templates in its server; not probed here
        greedy = []
        for k, ids in enumerate(req["prompts"]):
            llm.reset()
            llm.eval(ids)
            np.save(Path(out, f"{label}-{k}.npy"), np.array(llm.scores[: len(ids)], dtype=np.float32))
            seq = list(ids)
            for _ in range(req["greedy"]):
                seq.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
                llm.eval([seq[-1]])
            greedy.append(seq[len(ids):])
        result["folders"][label] = {"logits": True, "greedy": greedy}
        del llm
        gguf.unlink()
    write_result(out, result)


if __name__ == "__main__":
    main(*sys.argv[1:3])
