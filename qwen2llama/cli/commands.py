"""The single-model commands: inspect, convert, verify, golden, tokenizer, synth."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from ..paths import check_file_output, reads_of
from ..publish import write_file
from . import render
from .app import (BaseOpt, DequantizeOpt, Dst, DtypeOpt, ForceOpt, GoldenOpt, GreedyOpt, JunitOpt, KindOpt,
                  LongPromptOpt, PromptsOpt,
                  QuickOpt, ReportOpt, ShardSizeOpt, Src, command, err, out)


@command
def inspect(src: Src, shard_size: ShardSizeOpt = "5GB", dtype: DtypeOpt = None, kind: KindOpt = "auto",
            base: BaseOpt = None,
            tensors: Annotated[bool, typer.Option(
                "--tensors", help="List every output tensor and its source.")] = False,
            dequantize: DequantizeOpt = None):
    """Show what was detected and the conversion plan, without writing anything."""
    from ..convert import Options, prepare

    prepared = prepare(src, Options(shard_size, dtype, kind, base=base, dequantize=dequantize))
    render.plan(out, prepared)
    if tensors:
        render.plan_tensors(out, prepared)


def _verify_and_report(src, dst, *, report, quick, prompts=None, long_prompt=None, display=None, base=None,
                       record=False, golden=None, junit=None, greedy_tokens=None, adapter=None):
    """Verify (against the source, or a golden file), show the summary, write the report, the JUnit
    file and the GitHub step summary; `record` adds the verdict to dst's conversion.json."""
    from .. import summary
    from ..manifest import record_verification
    from ..verify import verify as run_verify
    from ..verify import verify_golden

    progress = render.TerminalProgress(err)
    if golden is not None:
        result = verify_golden(dst, golden, progress=progress, display=display)
    else:
        result = run_verify(src, dst, quick=quick, prompts=prompts, long_prompt=long_prompt,
                            progress=progress,
                            display=display, base=base, greedy_tokens=greedy_tokens, adapter=adapter)
    render.verify_summary(out, result)
    if report is not None:
        result.write(report)
        out.print(f"report: {report}")
    if junit is not None:
        Path(junit).write_text(summary.verify_junit(result), encoding="utf-8")
    summary.append_github_summary(summary.verify_markdown(result))
    if record:
        record_verification(Path(dst), result)
    result.raise_if_failed()


@command
def convert(src: Src, dst: Dst, shard_size: ShardSizeOpt = "5GB", dtype: DtypeOpt = None,
            kind: KindOpt = "auto",
            base: BaseOpt = None, force: ForceOpt = False,
            verify: Annotated[bool, typer.Option(
                "--verify/--no-verify", help="Check the result before publishing it.")] = True,
            checksums: Annotated[bool, typer.Option(
                "--checksums/--no-checksums",
                help="Record each output file's digest in conversion.json.")] = True,
            hash: Annotated[str, typer.Option(
                "--hash", help="blake3 | sha256: the digest conversion.json records (sha256 costs "
                               "~5x the CPU).")]
            = "blake3",
            quick: QuickOpt = False, report: ReportOpt = None,
            golden: Annotated[Optional[Path], typer.Option(
                "--golden",
                help="Also record a golden file here, with the digests of the files written.")] = None,
            dry_run: Annotated[bool, typer.Option(
                "--dry-run", help="Check everything and print the plan; write nothing.")] = False,
            dequantize: DequantizeOpt = None,
            adapter: Annotated[Optional[Path], typer.Option(
                "--adapter", help="A PEFT LoRA adapter trained on SRC: converted too (or folded in "
                                  "with --merge).")]
            = None,
            adapter_out: Annotated[Optional[Path], typer.Option(
                "--adapter-out",
                help="Where the converted adapter goes (default: DST-adapter beside DST).")] = None,
            merge: Annotated[bool, typer.Option(
                "--merge", help="Fold --adapter into the weights instead (for runtimes without LoRA); use "
                                "--dtype float32 for an exact result.")] = False):
    """Convert SRC into a LLaMA checkpoint in DST, then verify it (unless --no-verify).

    Example: qwen2llama convert ./Qwen-7B-Chat ./Qwen-7B-Chat-llama --shard-size 2GB
    """
    from ..convert import Options, prepare, write

    if merge and adapter is None:
        raise InputError("--merge needs --adapter", fix="give the PEFT adapter folder with --adapter")
    options = Options(shard_size, dtype, kind, force, checksums, base, hash, dequantize,
                      str(adapter) if merge else None)
    prepared = prepare(src, options, dst)
    render.plan(out, prepared)
    # every output location, before the first byte is written (paths.py)
    for path, what, replace_ok in ((golden, "the golden file", force), (report, "the report", True)):
        if path is not None:
            check_file_output(path, prepared.reads, force=replace_ok, what=what, inside=[dst])
    adapter_dst = None
    if adapter is not None and not merge:
        from ..adapters import prepare_adapter

        adapter_dst = adapter_out or dst.parent / f"{dst.name}-adapter"
        prepare_adapter(adapter, adapter_dst, base=prepared.plan.checkpoint, force=force,
                        protect=[*prepared.reads, prepared.out])  # every check, early
    if dry_run:
        out.print("dry run: the checkpoint, the vocabulary and the output location are usable; "
                  "nothing written")
        return
    def before(staging):
        if verify:
            _verify_and_report(prepared.plan.checkpoint, staging, report=report, quick=quick, display=dst,
                               record=True, adapter=prepared.adapter)
        if golden is not None:
            _record_golden(prepared.plan.checkpoint, golden, quick=quick, staging=staging, plan=prepared.plan)

    write(prepared, progress=render.TerminalProgress(err), before_publish=before)
    out.print(f"[green]wrote[/] {dst}")
    if adapter_dst is not None:
        from .adapter_command import convert_adapter_step

        convert_adapter_step(prepared.plan.checkpoint, adapter, adapter_dst, dst, force=force, verify=verify,
                             quick=quick, report=None, hash=hash)


def _record_golden(ckpt, path: Path, *, quick=False, prompts=None, long_prompt=None, staging=None, plan=None):
    from .. import manifest
    from ..verify import golden as golden_mod

    files = None
    if staging is not None:
        record = manifest.read(staging)
        files = {"hash": record["hash"], "files": record["files"]}
    tensors, meta = golden_mod.record(ckpt, prompts=prompts, quick=quick, long_prompt=long_prompt,
                                      progress=render.TerminalProgress(err), files=files, plan=plan)
    write_file(path, lambda tmp: golden_mod.write(tmp, tensors, meta))
    out.print(f"golden file: {path} ({path.stat().st_size / 1e6:.2f} MB, {len(meta['prompts'])} prompts, "
              f"{len(meta['tensor_digests']['tensors'])} tensor digests)")


@command
def golden(src: Src, file: Annotated[Path, typer.Argument(help="The golden file to write (safetensors).")],
           prompts: PromptsOpt = None, quick: QuickOpt = False, long_prompt: LongPromptOpt = None,
           base: BaseOpt = None, dtype: DtypeOpt = None, dequantize: DequantizeOpt = None,
           force: Annotated[bool, typer.Option("--force", help="Replace FILE if it exists.")] = False):
    """Record what `verify OUT --golden FILE` needs from the Qwen reference on SRC, so that CI can
    verify a converted folder without the source checkpoint. --dtype / --dequantize: the tensor
    digests describe the conversion made with the same option."""
    from ..plan import build_plan
    from ..sources import open_source

    ckpt = open_source(src, base)
    check_file_output(file, reads_of(ckpt), force=force, what="the golden file")
    _record_golden(ckpt, file, quick=quick, prompts=prompts, long_prompt=long_prompt,
                   plan=build_plan(ckpt, dtype, dequantize))


@command
def verify(first: Annotated[str, typer.Argument(
               help="SRC then the converted folder; with --golden, the converted folder alone.",
                                                metavar="[SRC] DST")],
           second: Annotated[Optional[str], typer.Argument(show_default=False, metavar="")] = None,
           report: ReportOpt = None, prompts: PromptsOpt = None, quick: QuickOpt = False,
           long_prompt: LongPromptOpt = None, base: BaseOpt = None, golden: GoldenOpt = None,
           junit: JunitOpt = None,
           greedy_tokens: GreedyOpt = None,
           adapter: Annotated[Optional[Path], typer.Option(
               "--adapter", help="The Qwen PEFT adapter: DST has it merged in (convert --merge); with "
                                 "--llama-adapter, DST is the converted base.")] = None,
           llama_adapter: Annotated[Optional[Path], typer.Option(
               "--llama-adapter", help="The converted adapter to check, loaded with PEFT on DST.")] = None):
    """Check that DST computes what SRC computes (or what a golden file recorded): integrity, tensors,
    config, tokenizer, logits.

    Exit 0: equivalent. 1: a check failed. 2: bad input.
    """

    if golden is not None and second is not None:
        raise InputError("with --golden, give only the converted folder",
                         fix="qwen2llama verify DST --golden FILE")
    if golden is None and second is None:
        raise InputError("verify needs SRC and DST, or DST and --golden FILE",
                         fix="qwen2llama verify SRC DST, or qwen2llama verify DST --golden FILE")
    src, dst = (None, Path(first)) if golden is not None else (first, Path(second))
    reads = reads_of(src, dst, golden, base, adapter, llama_adapter)
    for path, what in ((report, "the report"), (junit, "the JUnit file")):
        if path is not None:  # never into a folder being verified; replacing an old report is fine
            check_file_output(path, reads, force=True, what=what)
    if llama_adapter is not None:
        if adapter is None or golden is not None:
            raise InputError("--llama-adapter needs SRC, DST and --adapter (the Qwen adapter it came from)",
                             fix="qwen2llama verify SRC DST --adapter QWEN_ADAPTER --llama-adapter "
                                 "LLAMA_ADAPTER")
        from .adapter_command import verify_and_report_adapter

        verify_and_report_adapter(src, dst, adapter, llama_adapter, quick=quick, report=report)
        return
    _verify_and_report(src, dst, report=report, quick=quick, prompts=prompts, long_prompt=long_prompt,
                       display=dst,
                       base=base, golden=golden, junit=junit, greedy_tokens=greedy_tokens, adapter=adapter)


@command
def tokenizer(src: Annotated[Path, typer.Argument(help="qwen.tiktoken, or a folder holding it.")], dst: Dst,
              kind: Annotated[str, typer.Option(
                  "--kind", help="chat | base: which eos the tokenizer declares.")] = "chat",
              model_max_length: Annotated[int, typer.Option(help="Context length to declare.")] = 8192,
              force: ForceOpt = False):
    """Write only the Hugging Face tokenizer files for a qwen.tiktoken."""
    from ..publish import staged_folder
    from ..tokenizer import read_tiktoken, write_tokenizer_files

    if kind not in ("chat", "base"):
        raise InputError(f"unknown --kind {kind!r}", fix="use chat or base")
    vocab = src / "qwen.tiktoken" if src.is_dir() else src
    tokens = read_tiktoken(vocab)
    with staged_folder(dst, force=force, protect=[vocab.parent]) as staging:
        stats = write_tokenizer_files(tokens, staging, chat=kind == "chat", model_max_length=model_max_length)
    out.print(f"[green]wrote[/] {dst}: {stats['regular_tokens']} regular + {stats['special_tokens']} special "
              f"tokens, {stats['merges']} merges")


@command
def synth(dst: Dst,
          preset: Annotated[str, typer.Option(
              help="Release widths: tiny, qwen-1_8b, qwen-7b, qwen-7b-chat-2023-08, qwen-14b, qwen-72b, ...")]
          = "tiny",
          layers: Annotated[Optional[int], typer.Option(help="Override the number of layers.")] = None,
          format: Annotated[str, typer.Option("--format", help="safetensors | bin")] = "safetensors",
          shards: Annotated[int, typer.Option(help="Number of weight files.")] = 1,
          dtype: Annotated[str, typer.Option(help="bfloat16 | float16 | float32")] = "bfloat16",
          seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
          trainer: Annotated[bool, typer.Option(
              "--trainer", help="Lay it out as a Trainer checkpoint-N/ folder (optimizer.pt etc., no "
                                "vocabulary).")] = False,
          gptq: Annotated[Optional[int], typer.Option(
              "--gptq",
              help="4 | 8: write the Int4/Int8 GPTQ release (also: a preset ending in -int4/-int8).")] = None,
          group_size: Annotated[Optional[int], typer.Option(
              "--group-size", help="GPTQ group size (default 128; 32 at tiny widths).")] = None,
          desc_act: Annotated[bool, typer.Option(
              "--desc-act", help="GPTQ with act-order: a permuted g_idx.")] = False,
          gptq_style: Annotated[str, typer.Option(
              "--gptq-style", help="autogptq (zero biases on every quantized linear, float16) | "
                                   "gptqmodel (--dtype for the dense tensors beside float16 scales, "
                                   "settings under meta)")]
          = "autogptq",
          adapter: Annotated[Optional[Path], typer.Option(
              "--adapter",
              help="Write a PEFT LoRA adapter for this Qwen checkpoint into DST instead.")] = None,
          targets: Annotated[str, typer.Option(help="Adapter target_modules, comma-separated.")] = "c_attn",
          rank: Annotated[int, typer.Option("--rank", help="Adapter rank r.")] = 8,
          alpha: Annotated[float, typer.Option("--alpha", help="Adapter lora_alpha.")] = 16,
          rslora: Annotated[bool, typer.Option("--rslora", help="Adapter with rsLoRA scaling.")] = False,
          dora: Annotated[bool, typer.Option("--dora", help="Adapter with DoRA magnitudes.")] = False,
          save: Annotated[str, typer.Option(
              "--save", help="Adapter modules_to_save, comma-separated (wte, lm_head, ln_f).")] = ""):
    """Write a Qwen v1 checkpoint with random weights at a release's widths (for tests and demos),
    or with --adapter, a PEFT LoRA adapter for one."""
    from ..synth import synthesize

    if adapter is not None:
        from ..synth_adapter import synthesize_adapter

        path = synthesize_adapter(dst, adapter, targets=tuple(t for t in targets.split(",") if t), r=rank,
                                  alpha=alpha, rslora=rslora, dora=dora,
                                  modules_to_save=tuple(m for m in save.split(",") if m), fmt=format,
                                  seed=seed)
        out.print(f"[green]wrote[/] {path} (LoRA r {rank} on {targets}, {format})")
        return

    path = synthesize(dst, preset, layers=layers, fmt=format, shards=shards, dtype=dtype, seed=seed,
                      trainer=trainer,
                      gptq=gptq, group_size=group_size, desc_act=desc_act, gptq_style=gptq_style)
    total = sum(p.stat().st_size for p in path.iterdir())
    out.print(f"[green]wrote[/] {path} ({preset}, {format}, {total / 1e9:.3f} GB)")
