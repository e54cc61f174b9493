"""`secateurs` command line, the commands that need no service: compress a model locally, print the spec's JSON
Schema, run a worker. The `secateurs` entry point is service/cli.py, which adds the service's commands (serve, keys).

    secateurs compress MODEL --data D.npz --spec S.json --out DIR
    secateurs schema
    secateurs preflight MODEL [--spec S.json] [--json]   what can be pruned, before any training
    secateurs worker [--name NAME]   one standalone worker process that pulls jobs from the store (dispatcher
                                     `none`), or a Celery worker (dispatcher `celery`)
    secateurs submit | status | wait | download | cancel ...   (a client of a server: workers/client_cli.py)

Settings come from SECATEURS_* environment variables (docs/CONFIG.md). Bad input ends with exit status 2 and one
line on stderr that names the problem. Nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from workers.cli_common import EXIT_CANCELLED, _BadInput, _exit_status, _fail, _read_spec


def cmd_compress(args) -> int:
    try:
        spec = _read_spec(args.spec)
        for label, p in (("model", args.model), ("data", args.data)):
            if p is not None and not Path(p).is_file():
                raise _BadInput(f"{label} file not found: {p}")
    except _BadInput as e:
        return _fail(str(e))

    from workers.console import ProgressDisplay, import_tensorflow_quietly, print_summary

    import_tensorflow_quietly()
    from workers.engine.pipeline import compress
    from workers.errors import Cancelled, EngineError

    display = ProgressDisplay(enabled=not args.quiet, total_epochs=spec.total_epochs)
    try:
        with display:
            manifest = compress(args.model, args.data, spec, args.out, progress=display.update)
    except Cancelled as e:
        return _fail(e.message, EXIT_CANCELLED)
    except EngineError as e:
        return _fail(f"{e.code}: {e.message}", _exit_status(e))
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_CANCELLED)
    if args.json:
        print(json.dumps(manifest["summary"], indent=2))
    else:
        print_summary(manifest, Path(args.out))
    return 0


def cmd_schema(args) -> int:
    from workers.spec import schema_text

    print(schema_text())
    return 0


def cmd_preflight(args) -> int:
    from workers.preflight_cli import cmd_preflight as run

    return run(args)


def load_settings(**overrides):
    """Settings from the environment, `overrides` (flags given on the command line) applied; a bad configuration
    ends the command with one line naming it."""
    from pydantic import ValidationError

    from workers.settings import Settings

    try:
        settings = Settings()
    except ValidationError as e:
        raise SystemExit(f"secateurs: error: invalid configuration: {e}") from None
    updates = {k: v for k, v in overrides.items() if v is not None}
    return settings.model_copy(update=updates) if updates else settings


def cmd_worker(args) -> int:
    from workers import redact

    settings = load_settings()
    redact.configure_logging(settings.log_level)
    if settings.worker.dispatcher == "celery":
        from workers.celery_app import run_worker as run_celery_worker

        try:
            return run_celery_worker(settings, name=args.name)
        except ValueError as e:
            return _fail(str(e))
    from workers.worker import run_worker

    run_worker(settings, args.name)
    return 0


def build_parser(*more: Callable[[argparse._SubParsersAction], None]) -> argparse.ArgumentParser:
    """The commands of this module; each of `more` registers further ones (service/cli.py: serve, keys)."""
    parser = argparse.ArgumentParser(prog="secateurs", description="Prune, regularize and compress Keras 3 models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compress", help="run a job spec on a model locally")
    p.add_argument("model", help="a .keras or legacy .h5 model file")
    p.add_argument("--data", help=".npz with x_train, y_train and optional x_val, y_val, x_test, y_test")
    p.add_argument("--spec", required=True, help="job spec JSON (see `secateurs schema`)")
    p.add_argument("--out", required=True, help="output directory for the model, artifacts and manifest.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("schema", help="print the JobSpec JSON Schema")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("preflight", help="what can be pruned in a model, and what a spec would leave (no training)")
    p.add_argument("model", help="a .keras or legacy .h5 model file")
    p.add_argument("--spec", help="job spec JSON: the job's checks and what each step would leave")
    p.add_argument("--json", action="store_true", help="print the whole answer as JSON instead of tables")
    p.set_defaults(func=cmd_preflight)

    p = sub.add_parser(
        "worker",
        help="run one worker process that pulls jobs from the store (a Celery "
        "worker with worker.concurrency processes when worker.dispatcher is celery)",
    )
    p.add_argument("--name", default="worker", help="a name for logs and the job's worker id")
    p.set_defaults(func=cmd_worker)

    from workers.client_cli import register as register_client  # submit | status | wait | download | cancel

    register_client(sub)

    for register in more:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
