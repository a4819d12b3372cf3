"""The ``weir`` console script: it takes SIGTERM and SIGINT before anything heavy is imported.

Importing weir's dependencies takes ~0.5-1.5 s; a SIGTERM in that window (a supervisor stopping a
service that just started) would otherwise kill the process with Python's default action instead
of the ordered stop `weir run` promises. The signal is remembered here and acted on once the
service's own handler is in place (:func:`weir.cli.serve_until_signalled`).
"""

from __future__ import annotations

import os
import signal
import sys

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_pending: list[int] = []
_installed = False  # only the console script holds signals; weir.cli.main called in-process leaves them alone


def _remember(signum: int, _frame: object) -> None:
    _pending.append(signum)


def take_pending() -> list[int]:
    """The stop signals received before the service's handler took over (and forget them)."""
    taken = list(_pending)
    _pending.clear()
    return taken


def release() -> None:
    """Give the stop signals their usual meaning again and deliver any that came meanwhile (for
    commands that do not drain, and once the service's own handler is gone: they end as if the
    signal had found them straight away)."""
    global _installed
    if not _installed:
        return
    _installed = False
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in take_pending():
        os.kill(os.getpid(), signum)


def print_redacted_traceback(kind: type[BaseException], value: BaseException, traceback: object) -> None:
    """``sys.excepthook`` of the console script: a crash prints its traceback as Python would, with
    every URL in it redacted (weir/redact.py): an exception's text may quote a node's key."""
    import traceback as tb

    from weir.redact import redact_text

    sys.stderr.write(redact_text("".join(tb.format_exception(kind, value, traceback))))  # type: ignore[arg-type]


def main() -> int:
    global _installed
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _remember)
    _installed = True
    sys.excepthook = print_redacted_traceback
    from weir.cli import main as cli_main

    return cli_main(sys.argv[1:])
