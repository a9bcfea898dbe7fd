"""Everything the CLI shows a person: progress, errors, the plan, the verify summary. The
library itself stays free of terminal code."""
from __future__ import annotations

import time
from collections import Counter

from rich.console import Console

from ..dtypes import NAME_OF
from ..progress import Progress
from ..storage.refs import unknown_kind
from .literal import compose, shown


PULSE_SECONDS = 10.0  # in a log, where a step is, at least this often while it lasts


class TerminalProgress(Progress):
    """A rich bar on a terminal (its text names the sub-step); in a log, plain lines every 10% and,
    while a step takes long, where it is every PULSE_SECONDS."""

    def __init__(self, console: Console):
        self.console = console
        self.bar = None

    def start(self, label, total, unit="B"):
        self.label, self.total, self.unit = label, max(total, 1), unit
        self.done, self.next_line, self.t0 = 0, 0.1, time.monotonic()
        self.last_line = self.t0
        if self.console.is_terminal:
            from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            count = DownloadColumn() if unit == "B" else MofNCompleteColumn()
            self.bar = Bar("[progress.description]{task.description}", BarColumn(), count,
                           TimeRemainingColumn(),
                           console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task(label, total=self.total)

    def _amount(self, n):
        return f"{n / 1e9:.2f} GB" if self.unit == "B" else f"{n} {self.unit}"

    def advance(self, n):
        self.done += n
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
        elif self.done / self.total >= self.next_line:
            self.console.print(f"{shown(self.label)}: {100 * self.done / self.total:.0f}% "
                               f"({self._amount(self.done)} of {self._amount(self.total)})")
            self.next_line = (int(10 * self.done / self.total) + 1) / 10
            self.last_line = time.monotonic()

    def detail(self, where):
        if self.bar is not None:
            self.bar.update(self.task, description=f"{self.label}: {where}")
        elif time.monotonic() - getattr(self, "last_line", 0.0) >= PULSE_SECONDS:
            elapsed = time.monotonic() - self.t0
            self.console.print(f"{shown(self.label)}: {shown(where)} ({self._amount(self.done)} of "
                               f"{self._amount(self.total)} done, {elapsed:.0f} s)")
            self.last_line = time.monotonic()

    def finish(self):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        secs = time.monotonic() - self.t0
        rate = f" ({self.done / 1e9 / max(secs, 1e-9):.2f} GB/s)" if self.unit == "B" else ""
        self.console.print(f"{shown(self.label)}: {self._amount(self.done)} in {secs:.1f} s{rate}")

    def note(self, message):
        self.console.print(f"{shown(message)}...")


def error(console: Console, kind: str, message: str, path: str | None = None, fix: str | None = None) -> None:
    """One short block: what went wrong, the file, what to do."""
    console.print(f"[bold red]{kind}:[/] {shown(message)}")
    if path:
        console.print(f"  file: {shown(str(path))}")
    if fix:
        console.print(f"  fix:  {shown(fix)}")


def plan(console: Console, prepared) -> None:
    p, ckpt = prepared.plan, prepared.plan.checkpoint
    c = ckpt.config
    console.print(f"source:  {shown(ckpt.folder)} ({ckpt.format}, {len(ckpt.files)} file(s), "
                  f"config generation {c.generation})")
    console.print(f"model:   hidden {c.hidden_size}, {c.num_layers} layers, {c.num_heads} heads x "
                  f"{c.head_dim}, "
                  f"MLP {c.mlp_width}, vocab rows {c.vocab_rows}, seq_length {c.seq_length}, "
                  f"eps {c.layer_norm_epsilon}, rope base {c.rotary_emb_base:g}, dynamic NTK "
                  f"{c.use_dynamic_ntk}, "
                  f"logn {c.use_logn_attn}")
    console.print(f"kind:    {'chat' if prepared.chat else 'base'} ({shown(prepared.chat_reason)})")
    console.print(f"layout:  {p.target.architecture} (--target {p.target.name})")
    if prepared.context is not None:
        x = prepared.context
        console.print(f"context: {x.tokens} tokens, rope_theta {x.rope_theta:.6g} (Qwen's NTK alpha "
                      f"{x.alpha}): exact for prompts of {x.band[0]}..{x.band[1]} tokens"
                      + ("; logn attention not carried" if x.logn else ""))
    if (storage := p.fmt.describe(NAME_OF[p.dtype])) is not None:
        console.print(f"storage: {shown(storage)}")
    kinds = Counter(t.kind for t in p.tensors)
    columns, zeros, casts = kinds["columns"], kinds["zeros"], kinds["cast"]
    copies = kinds["copy"] + columns
    computed = Counter(t.derived.label for t in p.tensors if t.kind == "computed")
    kinds = [f"{copies} byte copies" + (f" ({columns} by columns)" if columns else ""),
             f"{casts} cast to {NAME_OF[p.dtype]}"] + [f"{n} {label}" for label, n in computed.items()] + \
        ([f"{zeros} zero biases" + ("" if p.mlp_bias else " (o_proj)")] if zeros else [])
    console.print(f"output:  {len(p.tensors)} tensors ({', '.join(kinds)}), {p.total_bytes / 1e9:.3f} GB "
                  f"in {len(prepared.shards)} shard(s)")
    if p.dropped:
        console.print(f"dropped: {shown(', '.join(p.dropped))} (buffers, not weights)")
    if p.zero_dropped:
        console.print(f"dropped: {len(p.zero_dropped)} all-zero biases a quantizer stored "
                      f"({p.target.label} has none there; verify re-reads them)")
    if p.mlp_bias:
        console.print("biases:  the source's MLP biases are not all zero: written, with mlp_bias true "
                      "(zeros where a linear has none)")
    for note in ckpt.notes:
        console.print(f"note:    {shown(note)}")
    if prepared.inventory is not None:
        inventory(console, prepared.inventory)


def inventory(console: Console, inv) -> None:
    """Every file of the source folder: what happens to it."""
    known = sum(len(v) for v in inv.known.values())
    console.print(f"files:   {len(inv.converted)} converted, {len(inv.carried)} carried, {known} not needed, "
                  f"{len(inv.ignored)} ignored (--ignore), {len(inv.unknown)} unknown")
    for label, names in (("carried", inv.carried), ("ignored", inv.ignored), ("unknown", inv.unknown)):
        if names:
            more = f" and {len(names) - 10} more" if len(names) > 10 else ""
            console.print(f"  {label}: {shown(', '.join(sorted(names)[:10]))}{more}")


def plan_tensors(console: Console, prepared) -> None:
    for shard, tensors in prepared.shards:
        for t in tensors:
            match t.kind:
                case "computed":
                    source = t.derived.describe()
                case "zeros":
                    source = "zeros"
                case "columns":
                    source = (f"{t.source.name}[{t.row_start}:{t.row_stop}, {t.cols[0]}:{t.cols[1]}] "
                              f"({t.source.file.name})")
                case "copy" | "cast":
                    source = f"{t.source.name}[{t.row_start}:{t.row_stop}] ({t.source.file.name})"
                case _:
                    raise unknown_kind(t.kind)
            console.print(f"{shard}  {shown(t.name)}  {list(t.shape)} {t.dtype}  <- {shown(source)}")


def adapter_plan(console: Console, prepared) -> None:
    a, cfg = prepared.adapter, prepared.config
    extras = [k for k in ("use_rslora", "use_dora") if cfg.get(k)]
    console.print(f"adapter: {shown(a.folder)} ({a.format}), LoRA r {a.rank}, alpha {cfg['lora_alpha']}"
                  + (f", {', '.join(extras)}" if extras else "") + f"; {len(a.factors)} adapted Qwen modules")
    targets = a.config.get("target_modules")
    names = ", ".join(targets) if isinstance(targets, list) else str(targets)
    console.print(f"targets: {shown(names)} -> {shown(', '.join(cfg['target_modules']))}")
    if cfg.get("modules_to_save"):
        console.print(f"saved:   {shown(', '.join(a.config.get('modules_to_save') or []))} -> "
                      f"{shown(', '.join(cfg['modules_to_save']))}")
    console.print(f"output:  {len(prepared.tensors)} tensors (byte copies and row ranges), "
                  "base_model_name_or_path "
                  f"{shown(cfg.get('base_model_name_or_path'))}")


def verify_summary(console: Console, result) -> None:
    for name, c in result["checks"].items():
        mark = {True: "[green]pass[/]", False: "[bold red]FAIL[/]", None: "[yellow]skip[/]"}[c["passed"]]
        console.print(f"  {name:<10} {mark}  {shown(c.get('summary', ''))}")
        for failure in c.get("failures", [])[:5]:
            console.print(f"      - {shown(failure)}")
        if c.get("fix"):
            console.print(f"      fix: {shown(c['fix'])}")
    context = result["checks"]["logits"].get("context")
    if context:
        _context_lines(console, context)
    beyond = result["checks"]["logits"].get("beyond_seq_length")
    if beyond:
        decoded = beyond.get("decoded_past_seq_length")
        if decoded:
            console.print(f"  info: a prompt within seq_length decoded past it: max |Δlogit| "
                          f"{decoded['max_abs_logit_diff_beyond']:.3g} (logn attention alone; RoPE exact)")
        console.print(f"  info: a prompt past seq_length ({beyond['tokens']} tokens) max |Δlogit| "
                      f"{beyond['max_abs_logit_diff_beyond']:.3g} (Qwen's dynamic NTK/logn; the layouts have "
                      "no equivalent)")
    verdict = "[green]equivalent[/]" if result["passed"] else "[bold red]NOT equivalent[/]"
    console.print(f"verify: {verdict} ({result['seconds']} s, peak RSS {result['peak_rss_mib']} MiB)")


def _context_lines(console: Console, x: dict) -> None:
    """--context: the band check and, as information, what the layouts cannot carry."""
    band = x.get("band_row")
    measured = (f"max |Δlogit| {band['max_abs_logit_diff']:.3g}" if band else
                f"max |Δhidden| {x['max_abs_hidden_diff']:.3g} after {x['layers']} layers")
    console.print(f"  context: a {x['tokens']}-token prompt (band {x['band'][0]}..{x['band'][1]}, Qwen's NTK "
                  f"alpha {x['ntk_alpha']}, logn off): {measured}")
    for key, what in (("logn_effect", "logn attention there (not carried)"),
                      ("short_prompt_vs_qwen", "a short prompt vs Qwen's own alpha")):
        if key in x:
            r = x[key]
            console.print(f"  info: {what}: max |Δlogit| {r['max_abs_logit_diff']:.3g} of "
                          f"{r['max_abs_logit']:.3g}, KL max {r['kl_max']:.2g}, "
                          f"top-1 {r['top1_agreement']:.3f}")


class JobLines(Progress):
    """Progress of one batch job as plain lines, prefixed with its name (jobs run side by side)."""

    def __init__(self, console: Console, name: str):
        self.console, self.name = console, name

    def start(self, label, total, unit="B"):
        self.label, self.total, self.done, self.next = label, max(total, 1), 0, 0.25

    def advance(self, n):
        self.done += n
        if self.done / self.total >= self.next:
            done = 100 * self.done / self.total
            self.console.print(f"[{shown(self.name)}] {shown(self.label)}: {done:.0f}%")
            self.next = (int(4 * self.done / self.total) + 1) / 4

    def note(self, message):
        self.console.print(f"[{shown(self.name)}] {shown(message)}...")

    def detail(self, where):
        now = time.monotonic()
        if now - getattr(self, "last_pulse", now) >= PULSE_SECONDS:
            self.console.print(f"[{shown(self.name)}] {shown(self.label)}: {shown(where)}")
            self.last_pulse = now
        elif not hasattr(self, "last_pulse"):
            self.last_pulse = now


def job_done(console: Console, r) -> None:
    mark = "[green]ok[/]" if not r.exit_code else "[bold red]FAIL[/]"
    logit = "" if r.max_abs_logit_diff is None else f", max |Δlogit| {r.max_abs_logit_diff:.2e}"
    console.print(f"{mark} {shown(r.name)}: {r.status} ({r.seconds:.1f} s{logit})")
    for line in r.notes:
        console.print(f"     note: {shown(line)}")
    for line in r.failures[:5]:
        console.print(f"     - {shown(line)}")


def batch_table(console: Console, results) -> None:
    from rich.table import Table

    table = Table(title="qwen2llama batch")
    for col in ("job", "source", "verdict", "max |Δlogit|", "seconds", "GB"):
        table.add_column(col, overflow="fold")
    for r in results:
        verdict = r.status if not r.exit_code else f"[bold red]{r.status}[/]"
        logit = "" if r.max_abs_logit_diff is None else f"{r.max_abs_logit_diff:.2e}"
        table.add_row(compose(shown(r.name)), compose(shown(r.src)), verdict, logit, f"{r.seconds:.1f}",
                      f"{r.gigabytes:.2f}")
    console.print(table)
