"""The single-model commands: inspect, convert, verify, golden, tokenizer, synth."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from . import render
from .literal import shown
from .app import (BaseOpt, CardOpt, ContextOpt, DequantizeOpt, DeviceOpt, Dst, DtypeOpt, ForceOpt, GoldenOpt,
                  GreedyOpt, IgnoreOpt, JunitOpt, KindOpt, LongPromptOpt, PromptsOpt,
                  QuickOpt, ReportOpt, ShardSizeOpt, Src, TargetOpt, command, err, out)


@command
def inspect(src: Src, shard_size: ShardSizeOpt = "5GB", dtype: DtypeOpt = None, kind: KindOpt = "auto",
            base: BaseOpt = None,
            tensors: Annotated[bool, typer.Option(
                "--tensors", help="List every output tensor and its source.", metavar="")] = False,
            dequantize: DequantizeOpt = None, target: TargetOpt = "llama", ignore: IgnoreOpt = None,
            context: ContextOpt = None):
    """Show what was detected, every file of the source and what happens to it, and the conversion
    plan, without writing anything."""
    from ..convert import prepare
    from ..options import ConvertOptions

    prepared = prepare(src, ConvertOptions.pick(locals()))
    render.plan(out, prepared)
    if tensors:
        render.plan_tensors(out, prepared)


@command
def convert(src: Src, dst: Dst, shard_size: ShardSizeOpt = "5GB", dtype: DtypeOpt = None,
            kind: KindOpt = "auto",
            base: BaseOpt = None, force: ForceOpt = False,
            verify: Annotated[bool, typer.Option(
                "--verify/--no-verify", help="Check the result before publishing it.", metavar="")] = True,
            checksums: Annotated[bool, typer.Option(
                "--checksums/--no-checksums",
                help="Record each output file's digest in conversion.json.", metavar="")] = True,
            hash: Annotated[str, typer.Option(
                "--hash", help="blake3 | sha256: the digest conversion.json records (sha256 costs "
                               "~5x the CPU).")]
            = "blake3",
            quick: QuickOpt = False, report: ReportOpt = None, junit: JunitOpt = None,
            device: DeviceOpt = "auto", card: CardOpt = True,
            golden: Annotated[Optional[Path], typer.Option(
                "--golden",
                help="Also record a golden file here, with the digests of the files written.")] = None,
            dry_run: Annotated[bool, typer.Option(
                "--dry-run", help="Check everything and print the plan; write nothing.", metavar="")] = False,
            dequantize: DequantizeOpt = None, target: TargetOpt = "llama", ignore: IgnoreOpt = None,
            context: ContextOpt = None,
            adapter: Annotated[Optional[Path], typer.Option(
                "--adapter", help="A PEFT LoRA adapter trained on SRC: converted too (or folded in "
                                  "with --merge).")]
            = None,
            adapter_out: Annotated[Optional[Path], typer.Option(
                "--adapter-out",
                help="Where the converted adapter goes (default: DST-adapter beside DST).")] = None,
            merge: Annotated[bool, typer.Option(
                "--merge", help="Fold --adapter into the weights instead (for runtimes without LoRA); use "
                                "--dtype float32 for an exact result.", metavar="")] = False):
    """Convert SRC into a LLaMA (or, with --target qwen2, Qwen2) checkpoint in DST, then verify it
    (unless --no-verify).

    Example: qwen2llama convert ./Qwen-7B-Chat ./Qwen-7B-Chat-llama --shard-size 2GB
    """
    from .. import pipeline

    if merge and adapter is None:
        raise InputError("--merge needs --adapter", fix="give the PEFT adapter folder with --adapter")
    reports_need_verify(verify, report, junit, device=device)
    options = pipeline.ConvertOptions.pick(locals())
    checks = (pipeline.VerifyOptions(quick=quick, report=report, junit=junit, device=device) if verify
              else None)
    step = pipeline.AdapterStep(adapter, adapter_out, merge) if adapter is not None else None
    run = pipeline.plan(src, dst, options, checks, golden=golden, adapter=step)  # every check, early
    render.plan(out, run.prepared)
    if run.adapter is not None:
        render.adapter_plan(out, run.adapter)
    if dry_run:
        out.print("dry run: the checkpoint, the vocabulary and the output location are usable; "
                  "nothing written")
        return
    result = pipeline.execute(run, progress=render.TerminalProgress(err), show=show_verdict)
    if result.golden is not None:
        _golden_line(golden, result.golden)
    out.print(f"[green]wrote[/] {shown(dst)}")
    if result.adapter_out is not None:
        out.print(f"[green]wrote[/] {shown(result.adapter_out)}")


def reports_need_verify(verify: bool, *reports, device: str = "auto") -> None:
    if not verify and any(r is not None for r in reports):
        raise InputError("--report and --junit hold verify's verdict, and --no-verify skips it",
                         fix="drop --no-verify, or drop --report/--junit")
    if not verify and device != "auto":
        raise InputError(f"--device {device} says where verify computes, and --no-verify skips it",
                         fix="drop --no-verify, or drop --device")


def show_verdict(result, options) -> None:
    """The verify summary, and where the report went."""
    render.verify_summary(out, result)
    if options.report is not None:
        out.print(f"report: {shown(options.report)}")


def _golden_line(path: Path, meta: dict) -> None:
    out.print(f"golden file: {shown(path)} ({path.stat().st_size / 1e6:.2f} MB, {len(meta['prompts'])} "
              "prompts, "
              f"{len(meta['tensor_digests']['tensors'])} tensor digests)")


@command
def golden(src: Src, file: Annotated[Path, typer.Argument(help="The golden file to write (safetensors).")],
           prompts: PromptsOpt = None, quick: QuickOpt = False, long_prompt: LongPromptOpt = None,
           base: BaseOpt = None, dtype: DtypeOpt = None, dequantize: DequantizeOpt = None,
           target: TargetOpt = "llama", context: ContextOpt = None, device: DeviceOpt = "auto",
           force: Annotated[bool, typer.Option("--force", help="Replace FILE if it exists.",
                                               metavar="")] = False):
    """Record what `verify OUT --golden FILE` needs from the Qwen reference on SRC, so that CI can
    verify a converted folder without the source checkpoint. --dtype / --dequantize: the tensor
    digests describe the conversion made with the same option, and --target for that layout."""
    from ..pipeline import write_golden

    meta = write_golden(src, file, base=base, dtype=dtype, dequantize=dequantize, target=target,
                        context=context, force=force, quick=quick, device=device,
                        prompts=prompts, long_prompt=long_prompt, progress=render.TerminalProgress(err))
    _golden_line(file, meta)


@command
def verify(first: Annotated[str, typer.Argument(
               help="SRC then the converted folder; with --golden, the converted folder alone.",
               metavar="[SRC] DST")],
           second: Annotated[Optional[str], typer.Argument(show_default=False, metavar="")] = None,
           report: ReportOpt = None, prompts: PromptsOpt = None, quick: QuickOpt = False,
           long_prompt: LongPromptOpt = None, base: BaseOpt = None, golden: GoldenOpt = None,
           junit: JunitOpt = None, greedy_tokens: GreedyOpt = None, device: DeviceOpt = "auto",
           adapter: Annotated[Optional[Path], typer.Option(
               "--adapter", help="The Qwen PEFT adapter: DST has it merged in (convert --merge); with "
                                 "--llama-adapter, DST is the converted base.")] = None,
           llama_adapter: Annotated[Optional[Path], typer.Option(
               "--llama-adapter", help="The converted adapter to check, loaded with PEFT on DST.")] = None):
    """Check that DST computes what SRC computes (or what a golden file recorded): integrity, tensors,
    config, tokenizer, logits.

    Exit 0: equivalent. 1: a check failed. 2: bad input.
    """
    from .. import pipeline

    if llama_adapter is not None:
        err.print("verify: Qwen reference + adapter vs LLaMA base + PEFT adapter (float32)")
    # with --golden and two folders, pipeline.check refuses the SRC
    src, dst = (None, Path(first)) if second is None else (first, Path(second))
    checks = pipeline.VerifyOptions(quick=quick, prompts=prompts, greedy_tokens=greedy_tokens,
                                    long_prompt=long_prompt, report=report, junit=junit, device=device)
    pipeline.check(src, dst, checks, golden=golden, base=base, adapter=adapter, llama_adapter=llama_adapter,
                   progress=render.TerminalProgress(err), show=show_verdict)


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
    out.print(f"[green]wrote[/] {shown(dst)}: {stats['regular_tokens']} regular + {stats['special_tokens']} "
              "special "
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
                                "vocabulary).", metavar="")] = False,
          gptq: Annotated[Optional[int], typer.Option(
              "--gptq",
              help="4 | 8: write the Int4/Int8 GPTQ release (also: a preset ending in -int4/-int8).")] = None,
          group_size: Annotated[Optional[int], typer.Option(
              "--group-size", help="GPTQ group size (default 128; 32 at tiny widths).")] = None,
          desc_act: Annotated[bool, typer.Option(
              "--desc-act", help="GPTQ with act-order: a permuted g_idx.", metavar="")] = False,
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
          rslora: Annotated[bool, typer.Option("--rslora", help="Adapter with rsLoRA scaling.",
                                               metavar="")] = False,
          dora: Annotated[bool, typer.Option("--dora", help="Adapter with DoRA magnitudes.",
                                             metavar="")] = False,
          save: Annotated[str, typer.Option(
              "--save", help="Adapter modules_to_save, comma-separated (wte, lm_head, ln_f).")] = ""):
    """Write a Qwen v1 checkpoint with random weights at a release's widths (for tests and demos),
    or with --adapter, a PEFT LoRA adapter for one."""
    from ..synth import synthesize

    if adapter is not None:
        from ..synth import synthesize_adapter

        path = synthesize_adapter(dst, adapter, targets=tuple(t for t in targets.split(",") if t), r=rank,
                                  alpha=alpha, rslora=rslora, dora=dora,
                                  modules_to_save=tuple(m for m in save.split(",") if m),
                                  fmt=format, seed=seed)
        out.print(f"[green]wrote[/] {shown(path)} (LoRA r {rank} on {shown(targets)}, {shown(format)})")
        return

    path = synthesize(dst, preset, layers=layers, fmt=format, shards=shards, dtype=dtype, seed=seed,
                      trainer=trainer,
                      gptq=gptq, group_size=group_size, desc_act=desc_act, gptq_style=gptq_style)
    total = sum(p.stat().st_size for p in path.iterdir())
    out.print(f"[green]wrote[/] {shown(path)} ({shown(preset)}, {shown(format)}, {total / 1e9:.3f} GB)")
