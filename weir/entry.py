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


def main() -> int:
    global _installed
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _remember)
    _installed = True
    from weir.cli import main as cli_main

    return cli_main(sys.argv[1:])
