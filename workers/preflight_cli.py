"""`secateurs preflight MODEL [--spec S] [--json]`: what can be pruned in a model and what a spec would leave.

The model is loaded the way a job loads it (`workers.preflight.preflight_file`, in this process). The table shows one
row per layer; with a spec, the estimates per step follow. Bad input (a missing file, an invalid spec, a model or
spec a job would refuse) ends with exit status 2 and one line on stderr; `--json` prints the whole answer, the same
document POST /v1/preflight returns.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from workers.cli_common import _BadInput, _exit_status, _fail, _read_spec


def cmd_preflight(args) -> int:
    try:
        spec = _read_spec(args.spec) if args.spec else None
        if not Path(args.model).is_file():
            raise _BadInput(f"model file not found: {args.model}")
    except _BadInput as e:
        return _fail(str(e))

    from workers.console import import_tensorflow_quietly

    import_tensorflow_quietly()
    from workers.errors import EngineError
    from workers.preflight import preflight_file

    try:
        result = preflight_file(args.model, spec)
    except EngineError as e:
        return _fail(f"{e.code}: {e.message}", _exit_status(e))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_preflight(result)
    return 0


def _n(v) -> str:
    return "—" if v is None else f"{v:,}"


UNSTRUCTURED = ("magnitude", "threshold", "n_m", "block")


def _methods(methods: list[str]) -> str:
    """ "unstructured" for the four unstructured methods together (the legend under the table says which)."""
    if all(m in methods for m in UNSTRUCTURED):
        methods = ["unstructured", *(m for m in methods if m not in UNSTRUCTURED)]
    return " + ".join(methods)


def _short(reason: str | None) -> str:
    """The head of a reason ("spared: output layer: ..." -> "spared (output layer)"); --json has it in full."""
    if not reason:
        return ""
    head, _, rest = reason.partition(": ")
    if head == "spared":
        return f"spared ({rest.partition(':')[0]})"
    return head


def print_preflight(result: dict, console: Console | None = None) -> None:
    console = console or Console()
    model = result["model"]
    table = Table(title=f"Preflight of {escape(str(model.get('file') or model['name']))} ({model['class']})")
    for name, justify in (
        ("layer", "left"),
        ("class", "left"),
        ("params", "right"),
        ("MACs", "right"),
        ("prunable", "left"),
        ("methods", "left"),
        ("group", "left"),
    ):
        table.add_column(name, justify=justify)
    for row in result["layers"]:
        prunable = "yes" if row["prunable"] else f"[dim]no: {escape(_short(row['reason']))}[/dim]"
        table.add_row(
            escape(row["name"]),
            row["class"],
            _n(row["params"]),
            _n(row["macs"]),
            prunable,
            _methods(row["methods"]),
            row["group"] or "",
        )
    console.print(table)
    console.print(
        "unstructured = magnitude, threshold, n_m, block; the same group is cut together; --json gives "
        "every reason in full"
    )
    t = result["totals"]
    console.print(
        f"{t['layers']} layers, {t['prunable_layers']} prunable; {_n(t['params'])} parameters "
        f"({_n(t['prunable_params'])} in prunable kernels), {_n(t['macs'])} MACs per sample, "
        f"{t['groups']} structured groups; weights {_n(t['size_bytes'])} B, gzip {_n(t['gzip_bytes'])} B"
    )
    if result.get("steps"):
        steps = Table(title="What the spec would leave (each step applied once, no training)")
        for name in ("step", "parameters", "non-zero", "MACs", "effective MACs", "bytes", "gzip bytes"):
            steps.add_column(name, justify="left" if name == "step" else "right")
        steps.add_row(
            "before",
            _n(t["params"]),
            _n(t["nonzero"]),
            _n(t["macs"]),
            _n(t["effective_macs"]),
            _n(t["size_bytes"]),
            _n(t["gzip_bytes"]),
        )
        for s in result["steps"]:
            steps.add_row(
                f"{s['index'] + 1}. {s['kind']}",
                _n(s["params"]),
                _n(s["nonzero"]),
                _n(s["macs"]),
                _n(s["effective_macs"]),
                _n(s["size_bytes"]),
                _n(s["gzip_bytes"]),
            )
        console.print(steps)
        for s in result["steps"]:
            if line := _cost_line(s):
                console.print(f"  {s['index'] + 1}. {s['kind']}: {escape(line)}")
    for note in result.get("notes", []):
        console.print(f"  note: {escape(note)}")


def _cost_line(step: dict) -> str | None:
    """What a sweeping or searching step costs, in words (None for the others)."""
    parts = []
    if sweep := step.get("sweep"):
        parts.append(
            f"a {sweep['method']} sensitivity sweep of {sweep['units']} units × {sweep['levels']} levels "
            f"({_n(sweep['evaluations'])} evaluations of {_n(sweep['samples'])} held-out samples)"
        )
    elif "sweep" in step:
        parts.append("reuses the sensitivity sweep of an earlier step")
    if step.get("trials_at_most") is not None:
        parts.append(f"up to {step['trials_at_most']} trials, {step['training_epochs_at_most']} training epochs in all")
    return "; ".join(parts) or None
