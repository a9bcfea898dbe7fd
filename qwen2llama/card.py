"""The model card (README.md) of a converted folder, from what the run recorded (conversion.json
and verify's verdict), never from free text: the source's own card describes the Qwen model and
its remote code, so it is never copied. Values from the source (names, paths, config strings) are
written inside code spans or YAML strings with markup and control characters escaped, so a
hostile config prints literally."""
from __future__ import annotations

import json
import re
from pathlib import Path

NAME = "README.md"
HUB_CACHE = re.compile(r"^models--([\w.-]+)--([\w.-]+)$")


def hub_id(folder: str | Path) -> str | None:
    """owner/name when the folder is a snapshot in the Hugging Face cache (the source was a hub id)."""
    parts = Path(folder).parts
    for name, below in zip(parts, parts[1:]):
        if below == "snapshots" and (m := HUB_CACHE.match(name)):
            return f"{m.group(1)}/{m.group(2)}"
    return None


def literal(value) -> str:
    """A value from the source as inline code: printable, no backticks or newlines to break out."""
    text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in str(value))
    return "`" + text.replace("`", "'") + "`"


def _front_matter(meta: dict) -> str:
    """YAML front matter; every value JSON-encoded (JSON is YAML), so nothing in it is markup."""
    return "---\n" + "".join(f"{k}: {json.dumps(v, ensure_ascii=False)}\n" for k, v in meta.items()) + "---\n"


def _verdict(verdict: dict | None) -> list[str]:
    if verdict is None:
        return ["**Not verified**: this folder was written with `--no-verify`. Run "
                "`qwen2llama verify SRC THIS_FOLDER` to check it."]
    logits = verdict["checks"]["logits"]
    lines = [f"`qwen2llama verify` found this folder **equivalent** to its source "
             f"({'quick prompt set' if verdict['quick'] else 'full prompt set'}, "
             f"{verdict['seconds']} s), checking with transformers' own classes in float32:", "",
             "| check | result |", "|---|---|"]
    mark = {True: "pass", None: "skipped", False: "FAIL"}
    lines += [f"| {name} | {mark[c['passed']]}: {c.get('summary', '').replace('|', chr(92) + '|')} |"
              for name, c in verdict["checks"].items()]
    greedy = logits.get("greedy")
    lines += ["", f"max |Δlogit| {logits['max_abs_logit_diff']:.3g} (tolerance "
              f"{logits['tolerance']['max_abs_logit_diff_rel']} × max(1, |logit|)), KL max "
              f"{logits.get('kl_max', float('nan')):.3g}, top-1 agreement {logits['top1_agreement']:.4f}, "
              f"greedy continuations identical: "
              f"{sum(g['identical'] for g in greedy)}/{len(greedy)}" if isinstance(greedy, list)
              else f"max |Δlogit| {logits['max_abs_logit_diff']:.3g}; greedy: {greedy}"]
    return lines


def _load(folder: str, chat: bool) -> list[str]:
    """How to load it; the transformers snippet runs as printed in tests/test_card.py."""
    ask = ('text = tokenizer.apply_chat_template([{"role": "user", "content": "Hello!"}], tokenize=False,\n'
           '                                     add_generation_prompt=True)' if chat else 'text = "Hello,"')
    return ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f"MODEL = {json.dumps(folder)}  # this folder, or the hub id it is published under",
            "tokenizer = AutoTokenizer.from_pretrained(MODEL)",
            'model = AutoModelForCausalLM.from_pretrained(MODEL, dtype="auto")', ask,
            'inputs = tokenizer(text, return_tensors="pt")',
            "out = model.generate(**inputs, max_new_tokens=16, do_sample=False)",
            'print(tokenizer.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
            "```", "",
            "No `trust_remote_code`: the classes are transformers' own. Other runtimes, as the project's "
            "end-to-end runs load them: vLLM `vllm serve MODEL` (or `LLM(MODEL)`); llama.cpp "
            "`python convert_hf_to_gguf.py MODEL --outtype f32`, then `llama-cli -m` the GGUF file; MLX "
            "`mlx_lm.generate --model MODEL --prompt \"Hello\"`."]


def _prompt_format(chat: bool) -> list[str]:
    if chat:
        return ["Chat model: ChatML, as Qwen v1 was trained (`tokenizer_config.json` holds the template):",
                "",
                "```", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                "Hello!<|im_end|>\n<|im_start|>assistant\n", "```", "",
                "Generation stops on `<|im_end|>` and `<|endoftext|>` (`generation_config.json`)."]
    return ["Base model: plain text in, plain text out; generation stops on `<|endoftext|>`."]


def _context(record: dict) -> list[str]:
    lc = record.get("long_context") or {}
    seq = (record.get("source", {}).get("config") or {}).get("seq_length")
    if lc.get("context_tokens"):
        low, high = lc["exact_for_prompt_lengths"]
        return [f"Written with `--context {lc['context_tokens']}`: RoPE is Qwen's own for prompts of "
                f"{low} to {high} tokens (NTK alpha {lc.get('ntk_alpha')}, "
                f"`rope_theta` {lc.get('rope_theta')}); "
                "exact there, logn attention aside (docs/long-context.md). Shorter prompts are rotated "
                "with that alpha too, where Qwen would use 1."]
    return [f"Exact for sequences up to {seq} tokens (the source's `seq_length`). Past it, Qwen v1 rescales "
            "RoPE (dynamic NTK) and queries (logn), which no LLaMA or Qwen2 runtime expresses; convert with "
            "`--context T` for a band of longer prompts."]


def _contents(record: dict) -> list[str]:
    inv = record.get("inventory") or {}
    lines = [f"- converted: {', '.join(literal(n) for n in inv.get('converted', [])) or 'the weights'}",
             f"- carried unchanged: {', '.join(literal(n) for n in inv.get('carried', [])) or 'nothing'}",
             "- left out on purpose (`--ignore`): "
             f"{', '.join(literal(n) for n in inv.get('ignored', [])) or 'nothing'}"]
    if record.get("dropped_tensors"):
        lines.append(f"- tensors the layout has no place for, left out: {len(record['dropped_tensors'])} "
                     "(listed in `conversion.json`)")
    return lines


def _quantization(record: dict) -> dict | None:
    q = (record.get("source") or {}).get("quantization")
    if not isinstance(q, dict) or not (record.get("target") or {}).get("quantized"):
        return None
    return {"method": "gptq", "bits": q.get("bits"), "group_size": q.get("group_size")}


def render(name: str, record: dict, verdict: dict | None, architecture: str) -> str:
    """The card of a converted model folder (conversion.json's record, verify's verdict or None)."""
    source, target = record.get("source") or {}, record.get("target") or {}
    base = hub_id(source.get("folder", ""))
    quant = _quantization(record)
    meta = {"license": "other", "license_name": "tongyi-qianwen", "license_link": "LICENSE",
            **({"base_model": base} if base else {}), "library_name": "transformers",
            "tags": [architecture.removesuffix("ForCausalLM").lower(), "qwen", "qwen2llama"],
            "pipeline_tag": "text-generation", "language": ["en", "zh"],
            **({"quantization": quant} if quant else {})}
    cfg = source.get("config") or {}
    chat, tool = bool(target.get("chat")), record.get("tool") or {}
    lines = [f"# {architecture} conversion of a Qwen v1 model", "",
             f"This folder holds {literal(base or Path(source.get('folder', '?')).name)} (Qwen v1, "
             f"`QWenLMHeadModel`, {cfg.get('num_layers')} layers, hidden {cfg.get('hidden_size')}) in the "
             f"`{architecture}` layout: {literal(target.get('dtype'))} weights, {target.get('shards')} "
             f"shard(s), {target.get('total_bytes', 0) / 1e9:.2f} GB"
             + (f", GPTQ {quant['bits']}-bit, group size {quant['group_size']}" if quant else "")
             + f". Converted by qwen2llama {literal(tool.get('version'))}; `conversion.json` records every "
             "file's digest and what was done.", "",
             "The license is the source's (Tongyi Qianwen): `LICENSE` and `NOTICE` are carried beside the "
             "weights.", "", "## Loading it", "", *_load(name, chat), "", "## Prompt format", "",
             *_prompt_format(chat), "", "## Context length", "", *_context(record), "",
             "## What was converted", "", *_contents(record), "", "## Verification", "", *_verdict(verdict)]
    return _front_matter(meta) + "\n" + "\n".join(lines) + "\n"


def write(folder: Path, name: str, verdict: dict | None, architecture: str) -> None:
    """README.md in a converted folder (staging; `name`: the folder it is published as), from its
    conversion.json and the verdict."""
    from . import manifest

    text = render(name, manifest.read(folder) or {}, verdict, architecture)
    (folder / NAME).write_text(text, encoding="utf-8")


def render_adapter(name: str, record: dict, config: dict, verdict: dict | None) -> str:
    """The card of a converted PEFT adapter."""
    base = str(config.get("base_model_name_or_path") or "")
    hub = base if re.fullmatch(r"[\w.-]+/[\w.-]+", base) and not Path(base).exists() else None
    meta = {"license": "other", "license_name": "tongyi-qianwen", **({"base_model": hub} if hub else {}),
            "library_name": "peft", "tags": ["lora", "qwen", "qwen2llama"],
            "pipeline_tag": "text-generation", "language": ["en", "zh"]}
    lines = ["# LoRA adapter for a converted Qwen v1 model", "",
             f"A PEFT LoRA adapter trained on Qwen v1, its modules renamed for the converted model "
             f"({literal(base or '?')}, `base_model_name_or_path`). Converted by qwen2llama "
             f"{literal((record.get('tool') or {}).get('version'))}; the license is the base model's.", "",
             "## Loading it", "", "```python", "from peft import PeftModel",
             "from transformers import AutoModelForCausalLM", "",
             "base = AutoModelForCausalLM.from_pretrained(\"CONVERTED_BASE\")",
             f"model = PeftModel.from_pretrained(base, {json.dumps(name)})", "```", "", "## Verification", "",
             *(_verdict(verdict) if verdict is not None and "logits" in verdict["checks"] else
               ["**Not verified**: give `--base` (the Qwen model) and `--llama-base` (its conversion) to "
                "check the adapter through PEFT against the Qwen reference."])]
    return _front_matter(meta) + "\n" + "\n".join(lines) + "\n"


def write_adapter(folder: Path, name: str, verdict: dict | None) -> None:
    from . import manifest

    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    (folder / NAME).write_text(render_adapter(name, manifest.read(folder) or {}, config, verdict),
                               encoding="utf-8")
