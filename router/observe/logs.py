"""The `router` logger, and the redaction every record passes through before any handler sees it.

API keys the router was configured with are registered here when a route table is built; a
filter on the `router` logger replaces them — and anything shaped like a bearer token or an
`api_key=` value — in the message, its arguments and the formatted traceback. Applications
attach their own handlers to `logging.getLogger("router")`; the library adds only a NullHandler.
"""

from __future__ import annotations

import logging
import re
import threading

LOGGER_NAME = "router"
REDACTED = "[redacted]"
_MIN_SECRET = 6
"""Shorter values are not registered: replacing them would mangle ordinary words."""
_PATTERNS = re.compile(
    r"(?i)(bearer\s+|api[_-]?key[\"']?\s*[:=]\s*[\"']?|x-api-key[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9._~+/=-]{6,}"
)

_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Never let `value` reach a log record (the router calls this for every configured API key)."""
    if value and len(value) >= _MIN_SECRET:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """`text` with registered secrets and token-shaped values replaced by `[redacted]`."""
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _PATTERNS.sub(lambda m: m.group(1) + REDACTED, text)


class RedactingFilter(logging.Filter):
    """Rewrites each record so no handler, formatter or log shipper ever sees a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            import traceback  # only when a record carries one: kept off `import router`

            text = "".join(traceback.format_exception(*record.exc_info))
            record.exc_text = redact(text).rstrip("\n")  # what `logging.Formatter` prints instead of re-rendering
        return True


def install() -> logging.Logger:
    """Give the `router` logger its NullHandler and the redacting filter (idempotent)."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
        logger.addHandler(logging.NullHandler())  # a library logs; the application decides where
    return logger
