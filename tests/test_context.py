"""Long context: `--context T` writes Qwen's own RoPE base for a T-token prompt, so prompts of T's band
(and their generation up to T) compute Qwen's function exactly with logn off; held to the independent
reference (its NTK alpha frozen at prefill, as Qwen's cache keeps it), through transformers' own
model with its own KV cache, in both layouts."""
from __future__ import annotations

import json
import math

import pytest
import torch

from qwen2llama import pipeline
from qwen2llama.options import ConvertOptions
from qwen2llama.reference import QwenReference
from qwen2llama.sources import open_source
from qwen2llama.synth import synthesize

from defects import edit_json, rehash
from helpers import bad, cli

S = 64  # the tiny preset's seq_length


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("context") / "qwen", "tiny", layers=2, dtype="float32", seed=21)


def _alpha(length: int) -> int:
    """Qwen's NTK factor, written here from its formula."""
    return 1 if length <= S else max(2 ** math.ceil(math.log(length / S, 2) + 1) - 1, 1)


def _ids(n: int, seed: int = 0) -> list[int]:
    return torch.randint(100, 150000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _greedy_with_cache(model, prompt: list[int], until: int) -> tuple[list[int], list[torch.Tensor]]:
    """transformers' own decoding: the prompt once, then one token at a time through its KV cache."""
    out = model(torch.tensor([prompt]), use_cache=True)
    cache, seq, logits = out.past_key_values, list(prompt), [out.logits[0, -1]]
    while len(seq) < until:
        seq.append(int(logits[-1].argmax()))
        out = model(torch.tensor([[seq[-1]]]), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        logits.append(out.logits[0, -1])
    return seq, logits


def _reference_steps(ref, seq: list[int], prompt_len: int) -> list[torch.Tensor]:
    """The reference's last-position logits after the prompt and after each appended token (each
    sequence run whole: with the alpha frozen, that is what Qwen computes through its cache)."""
    weights = [ref.layer_weights(i) for i in range(ref.cfg.num_layers)]
    head = ref._w("lm_head.weight")
    steps = []
    for n in range(prompt_len, len(seq)):
        x = ref.embed(seq[:n])
        for w in weights:
            x = ref.block(w, x)
        steps.append(ref.final_norm(x[-1:])[0] @ head.T)
    return steps


@pytest.mark.parametrize("target", ["llama", "qwen2"])
def test_context_4s_is_exact_in_its_band_and_decoding_to_it(qwen, tmp_path, target):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "ctx"
    result = pipeline.run(qwen, out, ConvertOptions(context=4 * S, target=target),
                          pipeline.VerifyOptions(quick=True))
    band = result.verified["checks"]["logits"]["context"]
    assert band["band"] == [2 * S + 1, 4 * S] and band["ntk_alpha"] == 7
    assert band["band_row"]["max_abs_logit_diff"] <= 1e-5
    assert band["short_prompt_vs_qwen"]["max_abs_logit_diff"] > 1e-2  # reported, not hidden
    config = json.loads((out / "config.json").read_text())
    assert config["max_position_embeddings"] == 4 * S
    assert config["rope_theta"] == 10000 * 7 ** (16 / 14)  # head size 16: Qwen's base for alpha 7
    record = json.loads((out / "conversion.json").read_text())["long_context"]
    assert record["exact_for_prompt_lengths"] == [2 * S + 1, 4 * S]
    assert record["logn_attention_carried"] is False
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    qwen_own = QwenReference(open_source(qwen), logn=False)  # Qwen's alpha for each length
    with torch.no_grad():
        for n in (3 * S, 4 * S):
            ids = _ids(n, n)
            assert (model(torch.tensor([ids])).logits[0] - qwen_own.logits(ids)).abs().max() <= 1e-5
        frozen = QwenReference(open_source(qwen), alpha=_alpha(3 * S), logn=False)  # the prefill's alpha
        seq, steps = _greedy_with_cache(model, _ids(3 * S, 1), 4 * S)
        want = _reference_steps(frozen, seq, 3 * S)
        assert max((a - b).abs().max().item() for a, b in zip(steps, want)) <= 1e-4
        short = _ids(S // 2, 2)
        assert (model(torch.tensor([short])).logits[0] - qwen_own.logits(short)).abs().max() > 1e-2


def test_the_default_output_decodes_past_seq_length_exactly_with_logn_off(qwen, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "default"
    pipeline.run(qwen, out, ConvertOptions(), verify=None)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    frozen = QwenReference(open_source(qwen), alpha=1, logn=False)  # a prompt <= S: Qwen's alpha is 1
    with torch.no_grad():
        seq, steps = _greedy_with_cache(model, _ids(S, 3), 2 * S)
    want = _reference_steps(frozen, seq, S)
    assert max((a - b).abs().max().item() for a, b in zip(steps, want)) <= 1e-4
    with_logn = QwenReference(open_source(qwen))  # logn on: what the layouts cannot carry
    assert (with_logn.logits(seq)[S:] - frozen.logits(seq)[S:]).abs().max() > 1e-3


@pytest.mark.parametrize("args,needle", [(["--context", "64"], "exact already"),
                                         (["--context", "40000"], "at most 32768"),
                                         (["--context", "lots"], "context")])
def test_context_refusals(qwen, tmp_path, args, needle):
    result = cli("convert", qwen, tmp_path / "out", *args)
    assert result.exit_code == 2 and needle in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_context_on_a_model_without_dynamic_ntk_says_it_is_exact_already(tmp_path):
    src = synthesize(tmp_path / "s72", "tiny-72b-style", layers=1, seed=2)
    bad("convert", src, tmp_path / "out", "--context", "4096", needle="dynamic NTK off")
    assert not (tmp_path / "out").exists()


def test_a_golden_file_of_a_context_output_replays_it_and_refuses_the_default(qwen, tmp_path):
    """Recorded with T's alpha frozen (what the --context folder computes): CI can verify it without
    the source; the default folder (Qwen's base) fails against it, and the other way round."""
    ctx, default = tmp_path / "ctx", tmp_path / "default"
    made = cli("convert", qwen, ctx, "--context", "256", "--quick", "--golden", tmp_path / "ctx.golden")
    assert made.exit_code == 0, made.output
    pipeline.run(qwen, default, ConvertOptions(), verify=None)
    assert cli("golden", qwen, tmp_path / "standalone.golden", "--context", "256", "--quick").exit_code == 0
    for golden in ("ctx.golden", "standalone.golden"):
        ok = cli("verify", ctx, "--golden", tmp_path / golden)
        assert ok.exit_code == 0, ok.output
        wrong = cli("verify", default, "--golden", tmp_path / golden)
        assert wrong.exit_code == 1 and "rope_theta" in wrong.output, wrong.output


def test_verify_catches_a_wrong_rope_theta_on_a_context_output(qwen, tmp_path):
    out = tmp_path / "ctx"
    pipeline.run(qwen, out, ConvertOptions(context=4 * S), verify=None)
    edit_json(out, "config.json", lambda c: c.__setitem__("rope_theta", 10000.0))  # the base: no NTK
    rehash(out)
    result = cli("verify", qwen, out, "--quick")
    assert result.exit_code == 1 and "rope_theta" in result.output, result.output


@pytest.mark.slow
def test_batch_redoes_a_folder_for_another_context(qwen, tmp_path):
    from qwen2llama import batch

    out = tmp_path / "out"

    def status(context):
        job = batch.Job("j", str(qwen), out, ConvertOptions(context=context))
        return batch.run_jobs([job], verify=True, quick=True)[0].status

    assert status(None) == "passed" and status(None) == "up to date"
    assert status(4 * S) == "passed" and status(4 * S) == "up to date"
    assert status(None) == "passed"
