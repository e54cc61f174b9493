"""The project's error classes: one root, `SecateursError`, and the engine's errors below it.

Every error the project raises on purpose carries a stable `code` (one per meaning: what a client may branch on), a
message for a person, and the `field` at fault where one applies. What a code means to a transport is not decided
here: the service maps codes to HTTP statuses in one table (service/errors.py), the CLI to exit codes.

The root lives in the engine, the innermost layer, because the engine may import nothing of workers/ outside
workers/engine while everything else may import the engine; `workers.errors` re-exports it beside the store's and
the artifact store's errors, so code outside the engine imports errors from there.
"""

from __future__ import annotations


class SecateursError(Exception):
    """Root of the project's errors: a stable `code`, a `message`, and the `field` at fault (if one is)."""

    code = "error"

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict:
        """The error as a failed job stores it: {"code", "message"} and "field" when one is at fault."""
        d = {"code": self.code, "message": self.message}
        if self.field:
            d["field"] = self.field
        return d


class EngineError(SecateursError):
    """A job failed in the engine for a reason we can name (this class itself: an internal failure)."""

    code = "engine_error"


class ModelRejected(EngineError):
    """The model file is unsafe, malformed or uses something we refuse to deserialize."""

    code = "model_rejected"


class UnsupportedFile(EngineError):
    """The file is not a model / dataset format we accept at all."""

    code = "unsupported_file"


class DataError(EngineError):
    """The dataset does not fit the model or contains bad values; the message names the array."""

    code = "data_error"


class SpecError(EngineError):
    """The spec is valid on its own but does not fit this model (unknown layer names, no loss, ...)."""

    code = "spec_error"


class ResourceLimit(EngineError):
    """A configured bound (size, memory, time, budget, artifact storage) was exceeded; the message names the limit.
    Raised by the engine and by the artifact store alike: one meaning, one code."""

    code = "resource_limit"


class Cancelled(EngineError):
    """The job was cancelled; raised at the next batch boundary."""

    code = "cancelled"
