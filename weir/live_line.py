"""A status line that redraws itself on a terminal (``weir run``'s and ``weir demo``'s progress).

On a terminal each :meth:`LiveLine.show` overwrites the last (``\\r``, then erase to the end of
the line), cut to the terminal's width so it never wraps; anywhere else it prints one line per
call. :func:`apart_from_logs` erases the line before any log record is written to the same
terminal, so a log line starts at column 0 instead of after the status; the next ``show`` draws
it again below.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

ERASE_LINE = "\r\x1b[K"


class LiveLine:
    def __init__(self, stream: TextIO, *, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.shown = False

    def show(self, text: str) -> None:
        if self.tty:
            width = shutil.get_terminal_size().columns
            self.stream.write(ERASE_LINE + text[: max(1, width - 1)])
            self.shown = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def erase(self) -> None:
        if self.shown:
            self.stream.write(ERASE_LINE)
            self.shown = False

    def end(self) -> None:
        """Keep the last line shown, and move below it (what follows starts on a line of its own)."""
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


class _EraseFirst(logging.Filter):
    def __init__(self, line: LiveLine) -> None:
        super().__init__()
        self.line = line

    def filter(self, record: logging.LogRecord) -> bool:
        self.line.erase()
        return True


@contextmanager
def apart_from_logs(line: LiveLine) -> Iterator[LiveLine]:
    """For the block, erase ``line`` before the root logger's handlers write a record."""
    handlers = list(logging.getLogger().handlers)
    eraser = _EraseFirst(line)
    for handler in handlers:
        handler.addFilter(eraser)
    try:
        yield line
    finally:
        for handler in handlers:
            handler.removeFilter(eraser)
