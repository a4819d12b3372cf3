"""Logging, configured once at the entry point: readable lines on a terminal, JSON lines otherwise."""

from __future__ import annotations

import json
import logging
import sys
import time

from weir.redact import redact_text


# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
_JSON_SCALARS = (str, int, float, bool, type(None))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (+ exc when there is one), then the fields.

    Fields are what the call passed as ``extra``, e.g.
    ``log.warning("...", extra={"event": "disconnect", "partition": "1"})``: each becomes a top-level
    key (never replacing ts, level, logger, msg or exc). Values that are not JSON scalars, lists or
    dicts (objects attached for in-process handlers, like the supervisor's ``weir_event``) are left out.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        for key, value in record.__dict__.items():
            if key in _RECORD_ATTRIBUTES or key in entry or key.startswith("_"):
                continue
            if isinstance(value, _JSON_SCALARS):
                entry[key] = value
            elif isinstance(value, (list, tuple, dict)):
                entry[key] = value if isinstance(value, dict) else list(value)
        return redact_text(json.dumps(entry, ensure_ascii=False, default=str))


class TextFormatter(logging.Formatter):
    """Readable lines for a terminal, redacted like :class:`JsonFormatter`'s."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def configure_logging(level: str = "INFO", fmt: str = "auto", stream=None) -> None:
    """Log to ``stream`` (stderr) at ``level`` and above, replacing the root logger's handlers.

    ``fmt``: "json" (one object a line, with each record's ``event`` fields), "text", or "auto"
    (text on a terminal, JSON otherwise)."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    if use_json:
        handler.setFormatter(JsonFormatter())
    else:
        formatter = TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        formatter.converter = time.localtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter (h2 frames, asyncio, httpx's line per webhook request) stays out unless debugging weir itself.
    for noisy in ("hpack", "h2", "grpclib", "asyncio", "trio_asyncio", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
