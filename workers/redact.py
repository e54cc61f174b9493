"""Credentials never reach a log line: `scheme://user:password@host` is logged as `scheme://user:***@host`.

`redact(text)` masks the user-info password of every URL in a text (a user-info without a password, such as a
token in `https://TOKEN@host`, is masked whole). `install()` makes every log record of the process redacted, from
any logger and whatever handler or formatter writes it (Celery and uvicorn install their own): the message, its
arguments, a formatted exception and a stack are redacted when the record is made. `configure_logging(level)`
does that and sets up the process's log lines (the CLI's commands, a spawned worker).
"""

from __future__ import annotations

import logging
import re

# scheme://user[:password]@ ; the password runs to the last '@' before white space, '/' or a quote (an unescaped
# '@' in it is masked too). Bounded scheme, no nested repetition: linear in the length of the text.
_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]{0,31}://)(?P<user>[^\s/@:'\"<>]*)"
    r"(?::[^\s/'\"<>]*)?@"
)
MASK = "***"


def _mask(m: re.Match) -> str:
    scheme, user, whole = m["scheme"], m["user"], m.group(0)
    if ":" in whole[len(scheme) :]:  # user:password@ -> user:***@
        return f"{scheme}{user}:{MASK}@"
    return f"{scheme}{MASK}@"  # a lone user-info is often a token


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it masked."""
    if "://" not in text or "@" not in text:
        return text
    return _USERINFO.sub(_mask, text)


_installed = False


def install() -> None:
    """Redact every log record made from now on in this process (idempotent)."""
    global _installed
    if _installed:
        return
    base = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = base(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: leave it to the handler to report
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            # formatted once here; Formatter.format() uses exc_text as it is when set
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


def configure_logging(level: str, fmt: str = "%(asctime)s %(name)s %(levelname)s %(message)s") -> None:
    """A process's log lines (the CLI's commands, a spawned worker): redacted (`install`), at `level`, in `fmt`."""
    install()
    logging.basicConfig(level=level.upper(), format=fmt)
