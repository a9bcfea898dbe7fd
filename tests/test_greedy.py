"""Greedy continuation with caches (#29): the reference decodes from Qwen's own per-layer cache, the
converted model is read once over the reference's continuation, and the verdict, tokens and logits
are those of the uncached loop they replace — checked here against oracles that share none of
that code: the reference re-run whole for every token, and transformers' own model class run
whole, without a cache. Also `--device` and the progress pulse."""
from __future__ import annotations

import functools
import io
import json

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file, save_file

from helpers import bad, cli
from qwen2llama.convert import convert
from qwen2llama.llama.reader import OutputSide
from qwen2llama.progress import NullProgress
from qwen2llama.qwen.checkpoint import open_checkpoint
from qwen2llama.reference import QwenCache, QwenReference, ntk_alpha
from qwen2llama.targets import for_config
from qwen2llama.verify.lockstep import continue_reference, forward, greedy, lockstep, reference_layers
from qwen2llama.verify.prompts import load_prompts, tiktoken_encoder

N = 6  # greedy tokens per prompt


def _prompts(ckpt) -> list[list[int]]:
    texts, _ = load_prompts(None, True)
    encode = tiktoken_encoder(ckpt.vocab, ckpt.extra_vocab)
    return [encode(t)[: ckpt.config.seq_length] for t in texts[:3]]


def _reference_uncached(ref, seq: list[int], n: int) -> tuple[list[int], list[torch.Tensor]]:
    """The reference's greedy continuation, the whole sequence re-run for every token."""
    seq, logits = list(seq), []
    with torch.no_grad():
        for _ in range(n):
            last = ref.logits(seq)[-1]
            logits.append(last)
            seq.append(int(last.argmax()))
    return seq[-n:], logits


def _transformers_uncached(folder, seq: list[int], n: int) -> list[int]:
    """The converted folder's own greedy continuation in transformers, without a cache."""
    model = _model(folder)
    seq = list(seq)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]), use_cache=False).logits[0, -1].argmax()))
    return seq[-n:]


@functools.lru_cache(maxsize=2)
def _model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _cached_greedy(src, folder, n: int = N) -> tuple[list[dict], object, list[list[int]]]:
    ckpt = open_checkpoint(src)
    side = OutputSide(folder, for_config(json.loads((folder / "config.json").read_text())))
    ref, seqs = QwenReference(ckpt), _prompts(ckpt)
    caches = [QwenCache() for _ in seqs]
    hr, _, lens = lockstep(ref, side, seqs, seqs, NullProgress(), caches=caches)
    ends = torch.tensor(lens).cumsum(0) - 1
    return greedy(ref, side, seqs, caches, hr[ends], n, NullProgress()), ref, seqs


@pytest.mark.parametrize("target", ["llama", "qwen2"])
def test_cached_greedy_equals_the_uncached_loops(variant, target, sources, converted, tmp_path):
    folder = converted[variant]
    if target == "qwen2":
        folder = tmp_path / "qwen2"
        convert(sources[variant], folder, target="qwen2")
    rows, ref, seqs = _cached_greedy(sources[variant], folder)
    for row, seq in zip(rows, seqs):
        tokens, logits = _reference_uncached(ref, seq, N)
        assert row["reference"] == tokens
        assert row["identical"] and row["llama"] == _transformers_uncached(folder, seq, N)
        assert row["max_abs_logit_diff"] <= 1e-5 * max(1.0, max(z.abs().max().item() for z in logits))


def test_cached_logits_are_the_uncached_ones(sources):
    """Along the continuation, the cached reference's logits are the whole re-run's (float32 round-off)."""
    ckpt = open_checkpoint(sources["st-single-fp32"])
    ref, seqs = QwenReference(ckpt), _prompts(ckpt)
    caches = [QwenCache() for _ in seqs]
    lens = [len(s) for s in seqs]
    flat = ref.embed([x for s in seqs for x in s])
    h = ref.final_norm(forward(flat, reference_layers(ref), lens, NullProgress(), caches))
    tokens, path = continue_reference(ref, caches, h[torch.tensor(lens).cumsum(0) - 1], N, NullProgress())
    head = ref.head_rows(0, ckpt.config.vocab_rows)
    for k, seq in enumerate(seqs):
        want_tokens, want = _reference_uncached(ref, seq, N)
        assert tokens[k] == want_tokens
        got = path[k] @ head.T
        assert (got - torch.stack(want)).abs().max() <= 1e-5 * max(1.0, torch.stack(want).abs().max().item())


def test_decoding_from_a_long_prompt_keeps_the_prefill_alpha(sources):
    """Qwen's semantics past seq_length: the NTK factor of the prefill stays for every decode step,
    and logn scales each new query by its own position. The cached reference against the whole
    sequence re-run with that alpha frozen, and against Qwen's per-length alpha (which differs)."""
    ckpt = open_checkpoint(sources["st-single-bf16"])
    cfg = ckpt.config
    prompt = (_prompts(ckpt)[0] * 10)[: cfg.seq_length + 8]  # 72 tokens: alpha 3
    frozen = ntk_alpha(len(prompt), cfg.seq_length, True)
    assert frozen > 1
    ref = QwenReference(ckpt)
    cache = QwenCache()
    h = ref.final_norm(forward(ref.embed(prompt), reference_layers(ref), [len(prompt)], NullProgress(),
                               [cache]))
    assert cache.alpha == frozen
    tokens, path = continue_reference(ref, [cache], h[-1:], 60, NullProgress())  # to 131 tokens: alpha 7
    whole = QwenReference(ckpt, alpha=frozen).logits(prompt + tokens[0][:-1])[len(prompt) - 1:]
    got = path[0] @ ref.head_rows(0, cfg.vocab_rows).T
    assert (got - whole).abs().max() <= 1e-5 * max(1.0, whole.abs().max().item())
    per_length = ref.logits(prompt + tokens[0][:-1])[len(prompt) - 1:]
    assert (got - per_length).abs().max() > 1e-3  # the cache does not re-rotate with a later alpha


def test_where_the_converted_model_parts_it_reports_its_own_tokens(sources, converted, tmp_path):
    """A planted defect that changes the third greedy token: the converted model's continuation is
    reported up to and including the first token where it parts, equal to its own uncached greedy."""
    import shutil

    src, folder = sources["st-single-fp32"], tmp_path / "out"
    shutil.copytree(converted["st-single-fp32"], folder)
    rows, _, seqs = _cached_greedy(src, folder)
    third, other = rows[0]["reference"][2], rows[0]["reference"][2] + 1
    shard = folder / "model.safetensors"
    tensors = load_file(shard)
    head = tensors["lm_head.weight"]
    head[[third, other]] = head[[other, third]]
    save_file(tensors, shard, metadata={"format": "pt"})
    rows, _, _ = _cached_greedy(src, folder)
    assert not rows[0]["identical"] and rows[0]["parted_at"] <= 2
    own = _transformers_uncached(folder, seqs[0], N)
    parted = rows[0]["parted_at"]
    assert rows[0]["llama"] == own[: parted + 1] and own[:parted] == rows[0]["reference"][:parted]


def _logits(report) -> dict:
    """The logits check's figures, without its timings."""
    logits = json.loads(report.read_text())["checks"]["logits"]
    logits["layers"] = [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in logits["layers"]]
    return {k: v for k, v in logits.items() if not k.startswith("seconds")}


def test_device_cpu_equals_the_default(sources, converted, tmp_path):
    src, out = sources["st-single-bf16"], converted["st-single-bf16"]
    for name, extra in (("default", []), ("cpu", ["--device", "cpu"])):
        report = tmp_path / f"{name}.json"
        assert cli("verify", src, out, "--quick", "--report", report, *extra).exit_code == 0
        assert cli("golden", src, tmp_path / f"{name}.safetensors", "--quick", *extra).exit_code == 0
    assert _logits(tmp_path / "default.json") == _logits(tmp_path / "cpu.json")
    default, cpu = load_file(tmp_path / "default.safetensors"), load_file(tmp_path / "cpu.safetensors")
    assert default.keys() == cpu.keys() and all(torch.equal(default[k], cpu[k]) for k in default)
    golden = tmp_path / "cpu.safetensors"
    result = cli("verify", out, "--golden", golden, "--device", "cpu", "--report", tmp_path / "g.json")
    assert result.exit_code == 0 and json.loads((tmp_path / "g.json").read_text())["passed"]


def test_bad_device_is_bad_input(sources, converted, tmp_path):
    src, out = sources["st-single-bf16"], converted["st-single-bf16"]
    bad("verify", src, out, "--device", "tpu", needle="--device 'tpu' is not one of")
    bad("verify", out, "--golden", tmp_path / "none.safetensors", "--device", "gpu", needle="is not one of")
    bad("golden", src, tmp_path / "g.safetensors", "--device", "", needle="is not one of")
    bad("convert", src, tmp_path / "new", "--device", "tpu", needle="is not one of")
    bad("convert", src, tmp_path / "new", "--no-verify", "--device", "cpu", needle="--no-verify skips it")
    assert not (tmp_path / "g.safetensors").exists() and not (tmp_path / "new").exists()
    if not torch.cuda.is_available():
        bad("verify", src, out, "--device", "cuda", needle="sees no cuda device")
        bad("convert", src, tmp_path / "new", "--device", "cuda", needle="sees no cuda device")
        assert not (tmp_path / "new").exists()


def test_progress_pulses_with_layer_prompt_and_token(sources, converted, monkeypatch):
    """In a log, a step that lasts says where it is (PULSE_SECONDS set to 0 here: every sub-step)."""
    from qwen2llama.cli import render
    from qwen2llama.verify import verify

    monkeypatch.setattr(render, "PULSE_SECONDS", 0.0)
    buffer = io.StringIO()
    progress = render.TerminalProgress(Console(file=buffer, force_terminal=False, width=200))
    verify(sources["st-single-bf16"], converted["st-single-bf16"], quick=True, progress=progress)
    log = buffer.getvalue().replace("\ue000", "").replace("\ue001", "")  # literal-text marks (cli/literal.py)
    for needle in ("logits: layers: layer 1/2 reference, prompt 1/", "layer 2/2 converted, prompt",
                   "logits: greedy (4 tokens): token 2/4, layer 1, prompt 3/3",
                   "the converted model on the continuations, layer 2"):
        assert needle in log, log
