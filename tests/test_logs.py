"""weir.logs.configure_logging: readable lines on a terminal, one JSON object per line otherwise.

Unit tests of the format choice and the JSON line's content. Each test reconfigures the root
logger; the ``restore_logging`` fixture puts back its handlers and levels (pytest's capture handlers
included) so that later tests log as before.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import re
import select
import sys
from collections.abc import Iterator

import pytest

from weir.logs import JsonFormatter, configure_logging

NOISY = ("hpack", "h2", "grpclib", "asyncio", "trio_asyncio", "httpx", "httpcore")
# "%(asctime)s %(levelname)-7s %(name)s: %(message)s" with asctime as %H:%M:%S
TEXT_LINE = re.compile(r"^\d\d:\d\d:\d\d (?P<level>[A-Z]+) +(?P<logger>\S+): (?P<msg>.*)$")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in NOISY}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, noisy_level in noisy.items():
            logging.getLogger(name).setLevel(noisy_level)


class TtyStream(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def log_one(message: str = "hello %s", *args: object, **kwargs: object) -> None:
    logging.getLogger("weir.test_logs").warning(message, *(args or ("there",)), **kwargs)


def as_json(stream: io.StringIO) -> dict:
    (line,) = stream.getvalue().splitlines()
    return json.loads(line)


def as_text(line: str) -> dict[str, str]:
    match = TEXT_LINE.match(line)
    assert match, f"not a readable text line: {line!r}"
    return match.groupdict()


def test_auto_writes_json_lines_when_the_stream_is_not_a_terminal():
    stream = io.StringIO()
    assert not stream.isatty()
    configure_logging("INFO", "auto", stream=stream)
    log_one()
    entry = as_json(stream)
    assert entry["msg"] == "hello there" and entry["level"] == "warning" and entry["logger"] == "weir.test_logs"
    assert isinstance(entry["ts"], float)


def test_auto_is_the_default_and_logs_to_stderr(monkeypatch):
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    configure_logging()
    log_one()
    assert as_json(stderr)["msg"] == "hello there"


def test_auto_writes_readable_lines_on_a_terminal():
    """A real pseudo-terminal: the stream's isatty() is the kernel's answer, not a stub."""
    master, slave = pty.openpty()
    try:
        with open(slave, "w", encoding="utf-8", closefd=False) as terminal:
            assert terminal.isatty()
            configure_logging("INFO", "auto", stream=terminal)
            log_one()
            terminal.flush()
            data = b""
            while not data.endswith(b"\n"):
                ready, _, _ = select.select([master], [], [], 5.0)
                assert ready, f"nothing more written to the terminal within 5 s (got {data!r})"
                data += os.read(master, 4096)
    finally:
        os.close(slave)
        os.close(master)
    line = data.decode().rstrip("\r\n")  # the tty turns "\n" into "\r\n"
    assert as_text(line) == {"level": "WARNING", "logger": "weir.test_logs", "msg": "hello there"}


def test_auto_writes_readable_lines_on_a_stream_that_says_it_is_a_terminal():
    stream = TtyStream()
    configure_logging("INFO", "auto", stream=stream)
    log_one()
    (line,) = stream.getvalue().splitlines()
    assert as_text(line) == {"level": "WARNING", "logger": "weir.test_logs", "msg": "hello there"}


def test_json_overrides_auto_on_a_terminal():
    stream = TtyStream()
    configure_logging("INFO", "json", stream=stream)
    log_one()
    assert as_json(stream)["msg"] == "hello there"


def test_text_overrides_auto_off_a_terminal():
    stream = io.StringIO()
    configure_logging("INFO", "text", stream=stream)
    log_one()
    (line,) = stream.getvalue().splitlines()
    assert as_text(line)["msg"] == "hello there"
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_configure_replaces_the_root_handlers_and_sets_the_level():
    stream = io.StringIO()
    configure_logging("warning", "json", stream=stream)
    root = logging.getLogger()
    assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, JsonFormatter)
    assert root.level == logging.WARNING
    logging.getLogger("weir.test_logs").info("below the level")
    log_one()
    assert as_json(stream)["msg"] == "hello there"  # the INFO line was not written
    configure_logging("DEBUG", "json", stream=stream)
    assert logging.getLogger("h2").level == logging.WARNING  # third-party chatter stays out


def test_a_json_line_carries_the_extra_fields_and_the_message():
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    extra = {"event": "disconnect", "source": "farcaster", "partition": "1", "reconnects": 3,
             "reconnect_in": 0.25, "shards": [1, 2], "detail": {"code": 14}, "weir_event": object()}
    log_one("shard %d: disconnected", 1, extra=extra)
    entry = as_json(stream)
    assert entry["msg"] == "shard 1: disconnected" and entry["level"] == "warning"
    assert {k: entry[k] for k in ("event", "source", "partition", "reconnects", "reconnect_in", "shards", "detail")} == {
        "event": "disconnect", "source": "farcaster", "partition": "1", "reconnects": 3,
        "reconnect_in": 0.25, "shards": [1, 2], "detail": {"code": 14}}
    assert "weir_event" not in entry  # not JSON: left out rather than stringified
    assert "exc" not in entry


def test_an_exception_is_serialized_on_the_same_json_line():
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        logging.getLogger("weir.test_logs").exception("it failed", extra={"event": "crash", "partition": "2"})
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")  # one line, however long the traceback
    entry = json.loads(text)
    assert entry["msg"] == "it failed" and entry["level"] == "error"
    assert entry["event"] == "crash" and entry["partition"] == "2"
    assert entry["exc"].startswith("Traceback (most recent call last):")
    assert "test_an_exception_is_serialized_on_the_same_json_line" in entry["exc"]
    assert entry["exc"].rstrip().endswith("ValueError: bad\nvalue")


def test_text_mode_keeps_the_traceback_readable():
    stream = io.StringIO()
    configure_logging("INFO", "text", stream=stream)
    try:
        raise ValueError("bad")
    except ValueError:
        logging.getLogger("weir.test_logs").exception("it failed")
    first, *rest = stream.getvalue().splitlines()
    assert as_text(first) == {"level": "ERROR", "logger": "weir.test_logs", "msg": "it failed"}
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: bad"
