"""Print trio's task tree with each task's await stack: what a hung test is waiting for.

Printed by conftest on SIGUSR1 (``kill -USR1 <pytest pid>``) and when pytest-timeout fails a
test for running too long: a stack of the main thread would only show trio's epoll wait.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import FrameType

import trio


def _await_frames(coro: object) -> Iterator[FrameType]:
    """The frames of a coroutine and of everything it awaits, outermost first."""
    seen = 0
    while coro is not None and seen < 200:
        seen += 1
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            yield frame
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)


def format_task_tree() -> str:
    """The task tree of the trio run this is called in, one line per task and per frame."""
    try:
        root = trio.lowlevel.current_root_task()
    except RuntimeError:
        return "(not inside trio.run)\n"
    lines: list[str] = []

    def visit(task: trio.lowlevel.Task, depth: int) -> None:
        pad = "  " * depth
        lines.append(f"{pad}task {task.name}")
        for frame in _await_frames(task.coro):
            if "/trio/_core/" in frame.f_code.co_filename:
                continue  # trio's own traps: the same few frames under every task
            lines.append(f"{pad}  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                visit(child, depth + 1)

    if root is not None:
        visit(root, 0)
    return "\n".join(lines) + "\n"
