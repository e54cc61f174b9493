"""Terminal output for the CLI: a rich progress bar fed by engine progress events, and the summary table."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from workers.engine.progress import Progress as EngineProgress


class ProgressDisplay:
    """One bar per training step; phases without training show as a status line."""

    def __init__(self, enabled: bool = True, total_epochs: int = 0, console: Console | None = None):
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not enabled,
            transient=True,  # the summary table replaces the bars; an error stays one line
        )
        self._tasks: dict[tuple[str, int], int] = {}
        self._status: int | None = None

    def __enter__(self):
        self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self._bar.__exit__(*exc)

    def update(self, ev: EngineProgress) -> None:
        if not self.enabled:
            return
        info = " ".join(
            part
            for part in (
                f"epoch {ev.epoch}/{ev.epochs}" if ev.epoch else "",
                f"sparsity {ev.sparsity:.1%}" if ev.sparsity is not None else "",
                f"loss {ev.loss:.4f}" if ev.loss is not None else "",
            )
            if part
        )
        if ev.steps:
            key = (ev.phase, ev.step_index)
            if key not in self._tasks:
                self._tasks[key] = self._bar.add_task(f"{ev.step_index + 1}. {ev.phase}", total=ev.steps, info="")
            self._bar.update(self._tasks[key], completed=ev.step or 0, info=info)
        elif ev.message:
            if self._status is None:
                self._status = self._bar.add_task("", total=None, info="")
            self._bar.update(self._status, description=ev.phase, info=f"{ev.message} {info}".rstrip())


def _fmt(v, pct=False):
    if v is None:
        return "—"
    if pct:
        return f"{v:.1%}"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def print_summary(manifest: dict, out_dir: Path, console: Console | None = None) -> None:
    console = console or Console()
    before, after = manifest["before"], manifest["after"]
    table = Table(title="Secateurs result", show_lines=False)
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for data, key in (("held-out", "evaluation"), ("test", "test_evaluation")):
        for k in sorted(after.get(key) or {}):
            table.add_row(f"{data} {k}", _fmt((before.get(key) or {}).get(k)), _fmt(after[key][k]))
    table.add_row("parameters", _fmt(before["params"].get("total")), _fmt(after["params"].get("total")))
    table.add_row("non-zero parameters", _fmt(before["params"].get("nonzero")), _fmt(after["params"].get("nonzero")))
    table.add_row(
        "sparsity (prunable)", _fmt(before["params"].get("sparsity"), True), _fmt(after["params"].get("sparsity"), True)
    )
    table.add_row("MACs", _fmt(before["compute"].get("macs")), _fmt(after["compute"].get("macs")))
    table.add_row(".keras bytes", _fmt(before["file"]["bytes"]), _fmt(after["file"]["bytes"]))
    table.add_row(".keras gzipped", _fmt(before["file"]["gzip_bytes"]), _fmt(after["file"]["gzip_bytes"]))
    for key, b in (before.get("latency_ms") or {}).items():
        a = (after.get("latency_ms") or {}).get(key, {})
        if isinstance(b, dict):
            table.add_row(f"latency {key} (ms, median)", _fmt(b.get("median")), _fmt(a.get("median")))
    console.print(table)
    summary = manifest["summary"]
    collapsed = summary.get("within_tolerance") is False
    win = f"[bold red]{summary['win']}[/bold red]" if collapsed else f"[bold]{summary['win']}[/bold]"
    console.print(f"win: {win}   artifacts in {escape(str(out_dir))}:")
    for fmt, info in manifest["artifacts"].items():
        preserved = "sparsity preserved" if info.get("sparsity_preserved", True) else "SPARSITY LOST"
        console.print(
            f"  {info.get('file', fmt)}  {_fmt(info.get('bytes'))} B, gzip {_fmt(info.get('gzip_bytes'))} B,"
            f" {preserved}"
        )
    report = manifest.get("report") or {}
    if report.get("file"):
        console.print(f"  {escape(report['file'])}  the report: open it in a browser")
    elif report.get("error"):
        console.print(f"  note: {escape(report['error'])}", style="bold red")
    budget = manifest.get("budget")
    if budget:
        chosen = budget["trials"][budget["chosen"]]
        met = "[bold]met[/bold]" if budget["met"] else "[bold red]NOT met[/bold red]"
        at_once = chosen.get("kept") == "pruned" and chosen.get("epochs")
        console.print(
            f"budget {met}: trial {budget['chosen'] + 1} of {len(budget['trials'])}, level "
            f"{chosen['level']:.4f}, held-out {escape(budget['metric'])} {chosen['metric']:.4g} "
            f"(drop {chosen['drop']:+.4f}, max {budget['max_drop']:g})"
            + (", pruned at once: its fine-tune lost more" if at_once else "")
        )
        test = budget.get("test")
        if test is not None:
            within = "within the budget" if test["within_budget"] else "[bold red]beyond the budget[/bold red]"
            console.print(
                f"  on the test data, which the search never saw: {escape(budget['metric'])} {test['metric']:.4g} "
                f"(drop {test['drop']:+.4f}), {within}"
            )
    for i, note in enumerate(summary.get("notes", [])):
        # the quality note comes first when a held-out (or test) metric fell beyond the tolerance: printed in red
        style = "bold red" if collapsed and i == 0 else "default"
        console.print(f"  note: {escape(note)}", style=style)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its native start-up chatter (printed before absl logging starts, so
    TF_CPP_MIN_LOG_LEVEL cannot silence it) kept off the terminal: the CLI promises one line on error."""
    import os
    import sys
    import tempfile

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # device discovery logs too
        finally:
            os.dup2(saved, 2)
            os.close(saved)
