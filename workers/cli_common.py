"""What every `secateurs` command module shares: exit statuses, the one-line error, reading a spec file."""

from __future__ import annotations

import sys
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_CANCELLED = 130


def _fail(message: str, status: int = EXIT_BAD_INPUT) -> int:
    print(f"secateurs: error: {message}", file=sys.stderr)
    return status


def _exit_status(error) -> int:
    """A SecateursError's exit status: 1 for an internal failure (the bare `engine_error`), 2 for what the input
    caused (a rejected model, bad data, a spec that does not fit, a limit)."""
    return EXIT_FAILED if error.code == "engine_error" else EXIT_BAD_INPUT


def _read_spec(path: str):
    from pydantic import ValidationError

    from workers.spec import describe_validation_error, load_spec

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise _BadInput(f"cannot read spec {path}: {e.strerror or e}") from None
    try:
        return load_spec(text)
    except ValidationError as e:
        raise _BadInput(f"invalid spec {path}: {describe_validation_error(e)}") from None


class _BadInput(Exception):
    pass
