"""`verify`: does the converted folder compute what the Qwen checkpoint computes?

Five checks, each with its own verdict: integrity (manifest hashes), tensors (bit-exact
slices), config (same network), tokenizer (tiktoken's ids, specials, chat template, stop
tokens) and logits (independent Qwen forward vs transformers' LLaMA layers). Both models are
run layer by layer, so memory is about one layer of each, whatever the model size.
"""
from __future__ import annotations

import json
import math
import resource
import time
import unicodedata
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .dtypes import NAME_OF, torch_dtype
from .errors import InputError, VerificationFailed
from .llama.reader import LlamaSide, read_output_tensors
from .plan import build_plan
from .progress import NullProgress
from .qwen.checkpoint import Checkpoint, open_checkpoint, read_ref
from .reference import QwenReference
from .tokens import DEFAULT_SYSTEM, ENDOFTEXT_ID, IM_END_ID, PATTERN, SPECIAL_IDS

CHUNK = 16 << 20
WIDENING = {("BF16", "F32"), ("F16", "F32")}  # casts that keep every value exactly
GREEDY_MAX_BYTES = 4 << 30  # greedy continuation re-reads the model per token: small models only
HEAD_BLOCK_ROWS = 8192
# float32 compute from bit-identical weights: the two sides differ by summation order only.
LONG_PROMPT_MAX_FLOPS = 2e13  # a few minutes of float32 matmuls on 2 cores
TOL_EXACT = {"max_abs_logit_diff_rel": 1e-4, "kl_max": 1e-6, "top1_agreement_min": 1.0}
# a narrowing cast (--dtype) changes the weights themselves.
TOL_LOSSY = {"max_abs_logit_diff_rel": None, "kl_max": 1e-2, "top1_agreement_min": 0.9}
# Golden ids from the Qwen documentation (specials parsed).
GOLDEN = {'print("<|endoftext|>")': [1350, 445, 151643, 899], "Hello world": [9707, 1879],
          " Hello world": [21927, 1879]}
# Qwen's vocabulary has no multi-digit ASCII token; full-width "１０" and "２０" are its only
# two-numeral tokens, so they are what exposes a digit-grouping regex.
PROBES = ["1234567890 and 3.14159265", "全角数字１０２０と１２３", "  leading spaces\r\n\r\nCRLF", "x" * 40,
          "中文数字一二三123", "don't I'LL\ttabs $value"]


class VerifyResult(dict):
    def raise_if_failed(self) -> None:
        if not self["passed"]:
            failed = [n for n, c in self["checks"].items() if c["passed"] is False]
            raise VerificationFailed(f"verify failed: {', '.join(failed)}", path=self["output"],
                                     fix="see the report; reconvert with the current qwen2llama")


def _check(passed: bool | None, **details) -> dict:
    return {"passed": passed, **details}


def load_prompts(path: Path | None, quick: bool) -> tuple[list[str], list[list[dict]]]:
    try:
        text = (Path(path).read_text(encoding="utf-8") if path else
                (resources.files("qwen2llama") / "configs" / "prompts.json").read_text(encoding="utf-8"))
        data = json.loads(text)
        texts, chats = list(data.get("texts", [])), list(data.get("chats", []))
        assert all(isinstance(t, str) for t in texts) and texts + chats
    except (OSError, ValueError, AssertionError, AttributeError):
        raise InputError("the prompt set is unreadable: expected JSON {\"texts\": [...], \"chats\": [[...]]}",
                         path=path, fix="fix the prompt file, or omit --prompts") from None
    return (texts[:3], chats[:1]) if quick else (texts, chats)


def qwen_chat_text(messages: list[dict]) -> str:
    """Qwen v1's chat helper (make_context), from its logic: a system turn, then each turn."""
    system = DEFAULT_SYSTEM
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    text = f"<|im_start|>system\n{system}<|im_end|>"
    for m in messages:
        text += f"\n<|im_start|>{m['role']}\n{m['content']}<|im_end|>"
    return text + "\n<|im_start|>assistant\n"


def tiktoken_encoder(ckpt: Checkpoint):
    """tiktoken configured as Qwen's own tokenizer: its regex, its specials."""

    import tiktoken

    from .tokenizer import read_tiktoken

    tokens = read_tiktoken(ckpt.folder / "qwen.tiktoken")
    enc = tiktoken.Encoding("qwen", pat_str=PATTERN, mergeable_ranks={t: r for r, t in enumerate(tokens)},
                            special_tokens=SPECIAL_IDS)
    return lambda text: enc.encode(unicodedata.normalize("NFC", text), allowed_special="all")


# ---------------------------------------------------------------------------------------------
# 1. integrity


def check_integrity(dst: Path) -> dict:
    from .convert import MANIFEST, sha256_file

    path = dst / MANIFEST
    if not path.is_file():
        return _check(None, note=f"no {MANIFEST}: not written by qwen2llama, hashes not checked")
    try:
        files = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return _check(False, failures=[f"{MANIFEST} is unreadable"])
    failures, unhashed = [], []
    for name, digest in sorted(files.items()):
        p = dst / name
        if not p.is_file():
            failures.append(f"{name}: missing")
        elif digest is None:
            unhashed.append(name)  # converted with --no-checksums
        elif sha256_file(p) != digest:
            failures.append(f"{name}: sha256 differs from the manifest")
    extra = sorted(p.name for p in dst.iterdir() if p.name not in files and p.name != MANIFEST)
    failures += [f"{name}: not in the manifest" for name in extra]
    return _check(not failures, files=len(files) - len(unhashed), not_hashed=unhashed, failures=failures)


# ---------------------------------------------------------------------------------------------
# 2. tensors


def _same_bytes(a, a_range, b, b_range) -> bool:
    """Compare two byte ranges of files chunk by chunk."""
    (ao, n), (bo, m) = a_range, b_range
    if n != m:
        return False
    with open(a.file, "rb") as fa, open(b.file, "rb") as fb:
        fa.seek(ao)
        fb.seek(bo)
        while n:
            k = min(n, CHUNK)
            if fa.read(k) != fb.read(k):
                return False
            n -= k
    return True


def check_tensors(ckpt: Checkpoint, dst_tensors: dict) -> dict:
    """Every output tensor equals its planned source slice bit for bit; nothing missing or extra."""
    dtypes = {r.dtype for r in dst_tensors.values()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in NAME_OF:
        return _check(False, failures=[f"output dtypes {sorted(dtypes)}: expected one floating-point type"])
    plan = build_plan(ckpt, NAME_OF[next(iter(dtypes))])
    expected = {t.name: t for t in plan.tensors}
    failures = [f"missing: {n}" for n in sorted(set(expected) - set(dst_tensors))]
    failures += [f"extra: {n}" for n in sorted(set(dst_tensors) - set(expected))]
    compared = exact = 0
    lossy = False
    for name, want in expected.items():
        got = dst_tensors.get(name)
        if got is None:
            continue
        if got.shape != want.shape:
            failures.append(f"{name}: shape {list(got.shape)}, expected {list(want.shape)}")
            continue
        compared += got.nbytes
        if want.source is None:
            ok = _all_zero(got)
            if not ok:
                failures.append(f"{name}: must be all zeros (Qwen has no bias there)")
        elif want.is_byte_copy:
            ok = _same_bytes(want.source, want.source.rows(want.row_start, want.row_stop), got, (got.offset, got.nbytes))
            if not ok:
                failures.append(f"{name}: bytes differ from {want.source.name}[{want.row_start}:{want.row_stop}]")
        else:
            lossy |= (want.source.dtype, want.dtype) not in WIDENING
            ok = _same_cast(want, got)
            if not ok:
                failures.append(f"{name}: differs from {want.source.name} cast to {NAME_OF[want.dtype]}")
        exact += ok
    return _check(not failures, tensors=len(expected), identical=exact, bytes_compared=compared,
                  output_dtype=NAME_OF[plan.dtype], lossy_cast=lossy, failures=failures[:50])


def _all_zero(ref) -> bool:
    left, offset = ref.nbytes, ref.offset
    with open(ref.file, "rb") as fh:
        fh.seek(offset)
        while left:
            k = min(left, CHUNK)
            if np.frombuffer(fh.read(k), dtype=np.uint8).any():
                return False
            left -= k
    return True


def _same_cast(want, got) -> bool:
    src = want.source
    step = max(1, CHUNK // max(1, src.nbytes // src.shape[0]))
    for start in range(want.row_start, want.row_stop, step):
        stop = min(start + step, want.row_stop)
        a = read_ref(src, start, stop).to(torch_dtype(want.dtype))
        b = read_ref(got, start - want.row_start, stop - want.row_start)
        if not torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# 3. config


def check_config(ckpt: Checkpoint, side: LlamaSide, raw: dict) -> dict:
    """The LLaMA config describes the Qwen network: written independently of llama/config.py."""
    q, c = ckpt.config, side.config
    rope = getattr(c, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(c, "rope_theta", None))
    expect = {
        "model_type": (raw.get("model_type"), "llama"),
        "hidden_size": (c.hidden_size, q.hidden_size),
        "intermediate_size": (c.intermediate_size, q.intermediate_size_written // 2),
        "num_hidden_layers": (c.num_hidden_layers, q.num_layers),
        "num_attention_heads": (c.num_attention_heads, q.num_heads),
        "num_key_value_heads": (c.num_key_value_heads, q.num_heads),
        "head_dim": (getattr(c, "head_dim", c.hidden_size // c.num_attention_heads), q.head_dim),
        "rms_norm_eps": (c.rms_norm_eps, q.layer_norm_epsilon),
        "rope_theta (as transformers reads it)": (theta, q.rotary_emb_base),
        "rope_type": (rope.get("rope_type", "default"), "default"),
        "vocab_size": (c.vocab_size, q.vocab_rows),
        "attention_bias": (c.attention_bias, True),
        "mlp_bias": (getattr(c, "mlp_bias", False), False),
        "tie_word_embeddings": (raw.get("tie_word_embeddings", True), False),
        "hidden_act": (c.hidden_act, "silu"),
        "bos_token_id": (raw.get("bos_token_id"), ENDOFTEXT_ID),
        "pad_token_id": (raw.get("pad_token_id"), ENDOFTEXT_ID),
    }
    if "rope_theta" in raw:
        expect["rope_theta (as written)"] = (raw["rope_theta"], q.rotary_emb_base)
    failures = [f"{k}: {got!r}, expected {want!r}" for k, (got, want) in expect.items() if got != want]
    eos = raw.get("eos_token_id")
    eos_ids = eos if isinstance(eos, list) else [eos]
    if not eos_ids or any(e not in (ENDOFTEXT_ID, IM_END_ID) for e in eos_ids):
        failures.append(f"eos_token_id: {eos!r}, expected Qwen's {ENDOFTEXT_ID} and/or {IM_END_ID}")
    return _check(not failures, compared=len(expect) + 1, failures=failures,
                  max_position_embeddings=raw.get("max_position_embeddings"), qwen_seq_length=q.seq_length)


# ---------------------------------------------------------------------------------------------
# 4. tokenizer


def check_tokenizer(ckpt: Checkpoint, dst: Path, encode, texts, chats, chat: bool | None) -> dict:
    from transformers import AutoTokenizer

    failures: list[str] = []
    try:
        tok = AutoTokenizer.from_pretrained(dst)
    except Exception as exc:
        return _check(False, failures=[f"AutoTokenizer cannot load the folder: {exc}"[:300]])
    rendered = []
    for messages in chats:
        want = qwen_chat_text(messages)
        try:
            got = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:
            got = f"<error: {exc}>"
        if got != want:
            failures.append(f"chat template renders {got[:80]!r}..., Qwen's helper gives {want[:80]!r}...")
        rendered.append(want)
    samples = list(texts) + rendered + PROBES + list(GOLDEN)
    # transformers >= 5 rebuilds Qwen2Tokenizer from vocab and merges with its own regex, while
    # other runtimes read tokenizer.json as written: both must give tiktoken's ids.
    from tokenizers import Tokenizer

    try:
        raw = Tokenizer.from_file(str(dst / "tokenizer.json"))
        encoders = {"AutoTokenizer": lambda t: tok(t, add_special_tokens=True)["input_ids"],
                    "tokenizer.json": lambda t: raw.encode(t).ids}
    except Exception as exc:
        failures.append(f"tokenizer.json cannot be loaded by the tokenizers library: {exc}"[:300])
        encoders = {"AutoTokenizer": lambda t: tok(t, add_special_tokens=True)["input_ids"]}
    mismatched = 0
    for text in samples:
        theirs = encode(text)
        bad = [(name, ids) for name, fn in encoders.items() if (ids := fn(text)) != theirs]
        if bad:
            mismatched += 1
            failures += [f"{name} ids differ on {text[:40]!r}: {ids[:12]} vs tiktoken {theirs[:12]}" for name, ids in bad]
    for text, ids in GOLDEN.items():
        if encode(text) != ids:
            failures.append(f"tiktoken itself gives {encode(text)} for {text!r}, documented {ids}: wrong vocabulary?")
    for content, token_id in SPECIAL_IDS.items():
        if tok.convert_tokens_to_ids(content) != token_id or tok(content)["input_ids"] != [token_id]:
            failures.append(f"special token {content} is not id {token_id}")
    gen_path = dst / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
    gen_eos = gen.get("eos_token_id")
    gen_eos = gen_eos if isinstance(gen_eos, list) else [gen_eos]
    if chat and IM_END_ID not in gen_eos:
        failures.append(f"generation_config.json eos_token_id {gen.get('eos_token_id')!r} lacks <|im_end|> "
                        f"({IM_END_ID}): a chat reply would run past its turn")
    if ENDOFTEXT_ID not in gen_eos:
        failures.append(f"generation_config.json eos_token_id {gen.get('eos_token_id')!r} lacks <|endoftext|>")
    return _check(not failures, samples=len(samples), mismatched_samples=mismatched, special_tokens=len(SPECIAL_IDS),
                  chat_templates=len(chats), tokenizer_class=type(tok).__name__, failures=failures[:50])


# ---------------------------------------------------------------------------------------------
# 5. logits


class _HeadStats:
    """Streaming logit statistics over vocab blocks: max |diff|, KL(ref || llama), top-1."""

    def __init__(self, n: int):
        self.max_diff = torch.zeros(n)
        self.max_ref = torch.zeros(n)
        self.m_r = torch.full((n,), -math.inf)
        self.m_l = torch.full((n,), -math.inf)
        self.s_r = torch.zeros(n, dtype=torch.float64)
        self.s_l = torch.zeros(n, dtype=torch.float64)
        self.t = torch.zeros(n, dtype=torch.float64)
        self.best_r = torch.full((n,), -math.inf)
        self.best_l = torch.full((n,), -math.inf)
        self.arg_r = torch.zeros(n, dtype=torch.long)
        self.arg_l = torch.zeros(n, dtype=torch.long)
        self.second_r = torch.full((n,), -math.inf)

    def add(self, zr: torch.Tensor, zl: torch.Tensor, offset: int) -> None:
        self.max_diff = torch.maximum(self.max_diff, (zr - zl).abs().amax(-1))
        self.max_ref = torch.maximum(self.max_ref, zr.abs().amax(-1))
        new_mr = torch.maximum(self.m_r, zr.amax(-1))
        new_ml = torch.maximum(self.m_l, zl.amax(-1))
        er = torch.exp((zr - new_mr[:, None]).double())
        scale_r = torch.exp((self.m_r - new_mr).double())
        self.s_r = self.s_r * scale_r + er.sum(-1)
        self.t = self.t * scale_r + (er * (zr - zl).double()).sum(-1)
        self.s_l = self.s_l * torch.exp((self.m_l - new_ml).double()) + torch.exp((zl - new_ml[:, None]).double()).sum(-1)
        self.m_r, self.m_l = new_mr, new_ml
        top2 = zr.topk(min(2, zr.shape[-1]), dim=-1).values
        block_second = top2[:, 1] if top2.shape[-1] > 1 else torch.full_like(top2[:, 0], -math.inf)
        vr, ir = zr.max(-1)
        vl, il = zl.max(-1)
        self.second_r = torch.maximum(torch.maximum(self.second_r, block_second), torch.minimum(self.best_r, vr))
        take_r, take_l = vr > self.best_r, vl > self.best_l
        self.arg_r = torch.where(take_r, ir + offset, self.arg_r)
        self.best_r = torch.where(take_r, vr, self.best_r)
        self.arg_l = torch.where(take_l, il + offset, self.arg_l)
        self.best_l = torch.where(take_l, vl, self.best_l)

    def kl(self) -> torch.Tensor:
        lse_r = self.m_r.double() + self.s_r.log()
        lse_l = self.m_l.double() + self.s_l.log()
        return (self.t / self.s_r - lse_r + lse_l).clamp_min(0.0)


def _head_stats(ref: QwenReference, side: LlamaSide, hr: torch.Tensor, hl: torch.Tensor) -> _HeadStats:
    """lm_head in vocab row blocks on both sides: never more than a block of either in memory."""
    stats = _HeadStats(hr.shape[0])
    src_ref = ref.head_ref()
    rows = src_ref.shape[0]
    for start in range(0, rows, HEAD_BLOCK_ROWS):
        stop = min(rows, start + HEAD_BLOCK_ROWS)
        wr = read_ref(src_ref, start, stop).float()
        wl = side.tensor("lm_head.weight", start, stop)
        stats.add(hr @ wr.T, hl @ wl.T, start)
    return stats


def _lockstep(ref: QwenReference, side: LlamaSide, ref_seqs, llama_seqs, progress, layer_log=None):
    """Both models side by side, one layer at a time, each on its own hidden states."""
    cat = lambda seqs: [x for s in seqs for x in s]  # noqa: E731
    lens = [len(s) for s in ref_seqs]
    hr, hl = ref.embed(cat(ref_seqs)), side.embed(cat(llama_seqs))
    n_layers = ref.cfg.num_layers
    for i in range(n_layers):
        t0 = time.perf_counter()
        w = ref.layer_weights(i)
        hr = torch.cat([ref.block(w, x) for x in hr.split(lens)])
        del w
        t1 = time.perf_counter()
        try:
            layer = side.layer(i)
        except (RuntimeError, KeyError) as exc:
            raise _LayerRejected(i, exc) from None
        hl = torch.cat([side.run_layer(layer, x) for x in hl.split(lens)])
        del layer
        t2 = time.perf_counter()
        if layer_log is not None:
            diff = (hr - hl).abs().max().item()
            layer_log.append({"layer": i, "max_abs_hidden_diff": diff,
                              "max_abs_hidden": hr.abs().max().item(),
                              "seconds_reference": round(t1 - t0, 4), "seconds_llama": round(t2 - t1, 4)})
        progress.advance(1)
    return ref.final_norm(hr), side.final_norm(hl), lens


class _LayerRejected(Exception):
    def __init__(self, layer: int, exc: Exception):
        self.layer, self.exc = layer, exc


def _model_bytes(ckpt: Checkpoint) -> int:
    return sum(r.nbytes for r in ckpt.tensors.values())


def long_prompt_flops(cfg, tokens: int) -> float:
    """Rough cost of one `tokens`-long sequence through both models: matmuls plus attention."""
    layer = 4 * cfg.hidden_size * cfg.projection_size + 3 * cfg.hidden_size * cfg.mlp_width
    per_side = 2 * tokens * (cfg.num_layers * layer + cfg.vocab_rows * cfg.hidden_size)
    per_side += 4 * cfg.num_layers * tokens * tokens * cfg.projection_size
    return 2 * per_side


def check_logits(ckpt: Checkpoint, side: LlamaSide, encode, texts, chats, *, quick: bool, lossy: bool,
                 greedy_tokens: int | None, progress, long_prompt: bool | None = None) -> dict:
    cfg = ckpt.config
    ref = QwenReference(ckpt)
    prompts = [(t[:30], encode(t)) for t in texts] + [(f"chat {k}", encode(qwen_chat_text(m))) for k, m in enumerate(chats)]
    prompts = [(n, ids[: cfg.seq_length]) for n, ids in prompts if ids]
    long_note = None
    if long_prompt is None:  # automatic: on unless it would take hours on a small machine
        flops = long_prompt_flops(cfg, cfg.seq_length)
        long_prompt = not quick and flops <= LONG_PROMPT_MAX_FLOPS
        if not quick and not long_prompt:
            long_note = (f"skipped the {cfg.seq_length}-token prompt: about {flops / 1e12:.0f} TFLOP, hours on a "
                         "few CPU cores; pass --long-prompt to run it")
    if long_prompt:
        filler = [x for _, ids in prompts for x in ids] or [ENDOFTEXT_ID]
        long_ids = (filler * (cfg.seq_length // len(filler) + 1))[: cfg.seq_length]
        prompts.append((f"{cfg.seq_length} tokens (= seq_length)", long_ids))
    seqs = [ids for _, ids in prompts]
    tol = TOL_LOSSY if lossy else TOL_EXACT
    layers: list[dict] = []
    progress.start("logits: layers", cfg.num_layers, "layers")
    try:
        hr, hl, lens = _lockstep(ref, side, seqs, seqs, progress, layers)
    except _LayerRejected as rej:
        progress.finish()
        return _check(False, failures=[f"layer {rej.layer}: transformers' LlamaDecoderLayer rejects the weights: "
                                       f"{rej.exc}"[:400]])
    progress.finish()
    stats = _head_stats(ref, side, hr, hl)
    kl = stats.kl()
    # a top-1 disagreement only counts where the reference's top two are further apart than the tolerance
    rel = tol["max_abs_logit_diff_rel"]
    margin = stats.best_r - stats.second_r
    allowed = (rel or 0.0) * stats.max_ref.clamp_min(1.0)
    agree = (stats.arg_r == stats.arg_l) | (margin <= 2 * allowed)
    per_prompt, failures = [], []
    for (name, ids), part_diff, part_ref, part_kl, part_agree in zip(
            prompts, stats.max_diff.split(lens), stats.max_ref.split(lens), kl.split(lens), agree.split(lens)):
        row = {"prompt": name, "tokens": len(ids), "max_abs_logit_diff": part_diff.max().item(),
               "max_abs_logit": part_ref.max().item(), "kl_mean": part_kl.mean().item(),
               "kl_max": part_kl.max().item(), "top1_agreement": part_agree.float().mean().item()}
        per_prompt.append(row)
        if rel is not None and row["max_abs_logit_diff"] > rel * max(1.0, row["max_abs_logit"]):
            failures.append(f"{name!r}: max |Δlogit| {row['max_abs_logit_diff']:.3g} > "
                            f"{rel:g} x max(1, |logit|) = {rel * max(1.0, row['max_abs_logit']):.3g}")
        if row["kl_max"] > tol["kl_max"]:
            failures.append(f"{name!r}: KL {row['kl_max']:.3g} > {tol['kl_max']:g}")
        if row["top1_agreement"] < tol["top1_agreement_min"]:
            failures.append(f"{name!r}: top-1 agreement {row['top1_agreement']:.4f} < {tol['top1_agreement_min']}")
    if failures:
        first = next((l for l in layers if l["max_abs_hidden_diff"] > 1e-3 * max(1.0, l["max_abs_hidden"])), None)
        if first:
            failures.append(f"the models part at layer {first['layer']} "
                            f"(max |Δhidden| {first['max_abs_hidden_diff']:.3g})")
    result = _check(not failures, compute_dtype="float32", tolerance=tol, lossy_cast=lossy, long_prompt=long_note
                    or ("included" if long_prompt else "not run (--quick)"), prompts=per_prompt,
                    max_abs_logit_diff=max(r["max_abs_logit_diff"] for r in per_prompt),
                    kl_max=max(r["kl_max"] for r in per_prompt),
                    top1_agreement=min(r["top1_agreement"] for r in per_prompt),
                    layers=layers, failures=failures)
    n_greedy = greedy_tokens if greedy_tokens is not None else (
        (4 if quick else 8) if _model_bytes(ckpt) <= GREEDY_MAX_BYTES else 0)
    if n_greedy:
        result["greedy"] = _greedy(ref, side, seqs[: min(3, len(seqs))], n_greedy, progress)
        bad = [g for g in result["greedy"] if not g["identical"]]
        if bad and not lossy:
            result["passed"] = False
            result["failures"].append(f"greedy continuations differ on {len(bad)} prompt(s)")
    else:
        result["greedy"] = (f"skipped: the model ({_model_bytes(ckpt) / 1e9:.1f} GB) would be re-read per "
                            f"token; pass greedy_tokens to force")
    if long_prompt and (cfg.use_dynamic_ntk or cfg.use_logn_attn):
        result["beyond_seq_length"] = _beyond(ref, side, seqs, cfg, progress)
    return result


def _greedy(ref, side, seqs, n: int, progress) -> list[dict]:
    ref_seqs, llama_seqs = [list(s) for s in seqs], [list(s) for s in seqs]
    progress.start(f"logits: greedy ({n} tokens)", n * ref.cfg.num_layers, "layers")
    for _ in range(n):
        hr, hl, lens = _lockstep(ref, side, ref_seqs, llama_seqs, progress)
        ends = torch.tensor(lens).cumsum(0) - 1
        stats = _head_stats(ref, side, hr[ends], hl[ends])
        for s, t in zip(ref_seqs, stats.arg_r.tolist()):
            s.append(t)
        for s, t in zip(llama_seqs, stats.arg_l.tolist()):
            s.append(t)
    progress.finish()
    return [{"tokens": n, "reference": r[len(p):], "llama": l[len(p):], "identical": r == l}
            for p, r, l in zip(seqs, ref_seqs, llama_seqs)]


def _beyond(ref, side, seqs, cfg, progress) -> dict:
    """Information only: past seq_length Qwen rescales RoPE (dynamic NTK) and queries (logn)."""
    filler = [x for s in seqs for x in s]
    length = cfg.seq_length + max(16, cfg.seq_length // 8)
    ids = (filler * (length // len(filler) + 1))[:length]
    progress.start("logits: beyond seq_length", cfg.num_layers, "layers")
    hr, hl, _ = _lockstep(ref, side, [ids], [ids], progress)
    progress.finish()
    stats = _head_stats(ref, side, hr, hl)
    inside, outside = slice(0, cfg.seq_length), slice(cfg.seq_length, length)
    return {"tokens": length, "note": "Qwen's dynamic NTK / logn attention act past seq_length; the LLaMA layout "
            "has no equivalent, so divergence there is expected and not a failure",
            "max_abs_logit_diff_within": stats.max_diff[inside].max().item(),
            "max_abs_logit_diff_beyond": stats.max_diff[outside].max().item(),
            "top1_agreement_beyond": (stats.arg_r[outside] == stats.arg_l[outside]).float().mean().item()}


# ---------------------------------------------------------------------------------------------


def verify(src: str | Path, dst: str | Path, *, quick: bool = False, prompts: Path | None = None,
           greedy_tokens: int | None = None, long_prompt: bool | None = None, progress=None,
           display: Path | None = None) -> VerifyResult:
    """Run every check of `dst` against `src`; never raises for a failed check (see raise_if_failed)."""
    progress = progress or NullProgress()
    t0 = time.perf_counter()
    src, dst = Path(src), Path(dst)
    ckpt = open_checkpoint(src)
    if not dst.is_dir():
        raise InputError("the converted folder does not exist", path=dst, fix="give the folder convert wrote")
    cfg_path = dst / "config.json"
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, ValueError):
        raise InputError("no readable config.json in the converted folder", path=cfg_path, fix="convert again") from None
    dst_tensors = read_output_tensors(dst)
    emb = dst_tensors.get("model.embed_tokens.weight")
    if emb is None or emb.shape != ckpt.tensors["transformer.wte.weight"].shape:
        raise InputError(f"SRC and DST are different models: embedding {list(emb.shape) if emb else None} vs "
                         f"{list(ckpt.tensors['transformer.wte.weight'].shape)}", path=dst,
                         fix="verify a folder against the checkpoint it was converted from")
    texts, chats = load_prompts(prompts, quick)
    encode = tiktoken_encoder(ckpt)
    manifest_path = dst / "conversion.json"
    chat = None
    if manifest_path.is_file():
        try:
            chat = json.loads(manifest_path.read_text())["target"]["chat"]
        except (ValueError, KeyError, TypeError):
            chat = None
    if chat is None:
        gen = (src / "generation_config.json")
        chat = (json.loads(gen.read_text()).get("chat_format") != "raw") if gen.is_file() else True
    checks: dict[str, dict] = {}
    progress.note("checking file hashes")
    checks["integrity"] = check_integrity(dst)
    progress.note("comparing tensors")
    checks["tensors"] = check_tensors(ckpt, dst_tensors)
    side = LlamaSide(dst)
    checks["config"] = check_config(ckpt, side, raw)
    progress.note("comparing tokenizers")
    checks["tokenizer"] = check_tokenizer(ckpt, dst, encode, texts, chats, chat)
    lossy = bool(checks["tensors"].get("lossy_cast"))
    checks["logits"] = check_logits(ckpt, side, encode, texts, chats, quick=quick, lossy=lossy,
                                    greedy_tokens=greedy_tokens, progress=progress, long_prompt=long_prompt)
    passed = all(c["passed"] is not False for c in checks.values())
    return VerifyResult(
        passed=passed, source=str(src), output=str(display or dst), quick=quick,
        seconds=round(time.perf_counter() - t0, 2),
        peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        checks=checks)


def render_summary(result: VerifyResult, console) -> None:
    from rich.markup import escape

    for name, c in result["checks"].items():
        mark = {True: "[green]pass[/]", False: "[bold red]FAIL[/]", None: "[yellow]skip[/]"}[c["passed"]]
        detail = ""
        if name == "tensors" and "identical" in c:
            detail = f"{c['identical']}/{c['tensors']} tensors identical, {c['bytes_compared'] / 1e9:.3f} GB compared"
        elif name == "logits" and "max_abs_logit_diff" in c:
            detail = (f"max |Δlogit| {c['max_abs_logit_diff']:.2e}, KL max {c['kl_max']:.1e}, "
                      f"top-1 {c['top1_agreement']:.4f}, {len(c['prompts'])} prompts")
            if isinstance(c.get("greedy"), list):
                same = sum(g["identical"] for g in c["greedy"])
                detail += f", greedy {same}/{len(c['greedy'])} identical"
        elif name == "tokenizer" and "samples" in c:
            detail = f"{c['samples'] - c['mismatched_samples']}/{c['samples']} samples give tiktoken's ids"
        elif name == "config" and "compared" in c:
            detail = f"{c['compared']} fields"
        elif name == "integrity":
            detail = c.get("note") or f"{c.get('files', 0)} files hashed" + (
                f", {len(c['not_hashed'])} without a recorded sha256 (--no-checksums)" if c.get("not_hashed") else "")
        console.print(f"  {name:<10} {mark}  {detail}")
        for f in c.get("failures", [])[:5]:
            console.print(f"      - {escape(f)}")
    if "beyond_seq_length" in result["checks"]["logits"]:
        b = result["checks"]["logits"]["beyond_seq_length"]
        console.print(f"  info: past seq_length ({b['tokens']} tokens) max |Δlogit| {b['max_abs_logit_diff_beyond']:.3g} "
                      f"(Qwen's dynamic NTK/logn; LLaMA has no equivalent)")
    verdict = "[green]equivalent[/]" if result["passed"] else "[bold red]NOT equivalent[/]"
    console.print(f"verify: {verdict} ({result['seconds']} s, peak RSS {result['peak_rss_mib']} MiB)")
