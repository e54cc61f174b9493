"""The engine's error classes. Each carries a stable `code` and the HTTP status the service maps it to."""

from __future__ import annotations


class EngineError(Exception):
    """Base class: a job failed for a reason we can name."""

    code = "engine_error"
    http_status = 500

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict:
        d = {"type": self.code, "message": self.message}
        if self.field:
            d["field"] = self.field
        return d


class ModelRejected(EngineError):
    """The model file is unsafe, malformed or uses something we refuse to deserialize."""

    code = "model_rejected"
    http_status = 422


class UnsupportedFile(EngineError):
    """The file is not a model / dataset format we accept at all."""

    code = "unsupported_file"
    http_status = 415


class DataError(EngineError):
    """The dataset does not fit the model or contains bad values; the message names the array."""

    code = "data_error"
    http_status = 422


class SpecError(EngineError):
    """The spec is valid on its own but does not fit this model (unknown layer names, no loss, ...)."""

    code = "spec_error"
    http_status = 422


class ResourceLimit(EngineError):
    """A configured bound (size, memory, time, budget) was exceeded; the message names the limit."""

    code = "resource_limit"
    http_status = 413


class Cancelled(EngineError):
    """The job was cancelled; raised at the next batch boundary."""

    code = "cancelled"
    http_status = 409
