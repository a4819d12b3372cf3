"""Small file helpers shared by the service, the simulators and the chaos harness."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: to a partial file beside it, then renamed.

    A reader never sees half of it, and a crash mid-write leaves the previous content (or none).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)
