"""Bad CLI input ends in one line on stderr that names the value and where it came from, never a traceback.

Most cases call ``weir.cli.main`` in this process (argparse and the config loader run before trio
starts); the ones that need the real entry point, a Redis that is not there, or the embedded
redis-server run ``python -m weir.cli`` as a subprocess. Nothing here reaches the network or sleeps.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from weir import cli

from helpers import SERVER_BINARIES

USAGE = cli.EXIT_USAGE
FAILURE = cli.EXIT_FAILURE


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No WEIR_* variable of the caller's leaks in; the default ./weir-data is under tmp_path."""
    for name in list(os.environ):
        if name.startswith("WEIR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def free_port() -> int:
    """A port that nothing listens on (bound, read, closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """``weir ARGV`` in this process: (exit code, the one line on stderr)."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.rstrip("\n").split("\n")
    assert len(lines) == 1 and lines[0], err
    return code, lines[0]


def run_process(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """``python -m weir.cli ARGV`` as a subprocess: (exit code, the one line on stderr)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WEIR_")} | (env or {})
    result = subprocess.run([sys.executable, "-m", "weir", *argv], capture_output=True, text=True,
                            env=environ, timeout=60, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1 and lines[0], result.stderr
    assert result.stdout == ""
    return result.returncode, lines[0]


UNREACHABLE = f"redis://127.0.0.1:{free_port()}/0"  # so config and usage cases never start a Redis


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        # Settings: named by the setting, its value and the flag that set it.
        (["tail", "--redis-url", UNREACHABLE, "--set", "redis.prefix=a{b"],
         ("weir: config error: redis.prefix: prefix 'a{b' cannot be used in a Redis key: it contains '{' "
         "(braces and whitespace are reserved by the key layout) (from command line --set)")),
        (["run", "--redis-url", UNREACHABLE, "--set", "redis.socket_timeout=-1"],
         "weir: config error: redis.socket_timeout: must be positive, got -1.0 (from command line --set)"),
        (["run", "--redis-url", UNREACHABLE, "--set", "batch.max_age_ms=-5"],
         "weir: config error: batch.max_age_ms: must be positive, got -5 (from command line --set)"),
        (["run", "--redis-url", UNREACHABLE, "--log-level", "LOUD"],
         "weir: config error: log_level: expected DEBUG, INFO, WARNING or ERROR, got 'LOUD' (from command line --log-level)"),
        (["run", "--redis-url", UNREACHABLE, "--log-format", "xml"],
         "weir: config error: log_format: expected auto, text or json, got 'xml' (from command line --log-format)"),
        (["run", "--redis-url", UNREACHABLE, "--shards", "1,x"],
         "weir: config error: farcaster.shards: expected a list of integers, got '1,x' (from command line --shards)"),
        (["run", "--redis-url", "redis://h:port"],
         "weir: config error: redis.url: invalid port in 'redis://h:port' (from command line --redis-url)"),
        (["run", "--redis-url", "redis://admin:hunter2@h:port"],  # the password is never printed
         "weir: config error: redis.url: invalid port in 'redis://***@h:port' (from command line --redis-url)"),
        (["run", "--redis-url", UNREACHABLE, "--set", "nope"],
         "weir: config error: --set 'nope': expected SECTION.KEY=VALUE (or log_level=, log_format=)"),
        # demo
        (["demo", "--events", "-5"], "weir demo: argument --events: expected a positive integer, got '-5'; see weir demo --help"),
        (["demo", "--events", "0"], "weir demo: argument --events: expected a positive integer, got '0'; see weir demo --help"),
        (["demo", "--shards", "0"], "weir demo: argument --shards: expected a positive integer, got '0'; see weir demo --help"),
        (["demo", "--rate", "-1"],
         "weir demo: argument --rate: expected a rate in events/s, 0 (as fast as possible) or more, got '-1'; see weir demo --help"),
        (["demo", "--rate", "nan"],
         "weir demo: argument --rate: expected a rate in events/s, 0 (as fast as possible) or more, got 'nan'; see weir demo --help"),
        # tail
        (["tail", "--redis-url", UNREACHABLE, "--partition", "a{b"],
         ("weir tail: argument --partition: partition 'a{b' cannot be used in a Redis key: it contains '{' "
         "(braces, ':' and whitespace are reserved by the key layout); see weir tail --help")),
        (["tail", "--redis-url", UNREACHABLE, "--source", "a:b"],
         ("weir tail: argument --source: source 'a:b' cannot be used in a Redis key: it contains ':' "
         "(braces, ':' and whitespace are reserved by the key layout); see weir tail --help")),
        (["tail", "--redis-url", UNREACHABLE, "--count", "-1"],
         "weir tail: argument --count: expected 0 (all) or a positive integer, got '-1'; see weir tail --help"),
        # chaos: zero generated schedules would be zero scenarios
        (["chaos", "--random", "-1"], "weir chaos: argument --random: expected 0 or a positive integer, got '-1'; see weir chaos --help"),
        (["chaos", "--json", "/nonexistent-dir/results.json"],
         "weir chaos: argument --json: '/nonexistent-dir/results.json': no directory '/nonexistent-dir'; see weir chaos --help"),
        # no command
        ([], "weir: the following arguments are required: COMMAND; see weir --help"),
    ],
)
def test_bad_argument_is_one_line_naming_value_and_source(capsys, argv: list[str], line: str) -> None:
    assert run_main(capsys, *argv) == (USAGE, line)


def test_data_dir_that_is_a_file(capsys, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    assert run_main(capsys, "run", "--data-dir", "afile") == (
        USAGE, "weir: config error: redis.data_dir: 'afile' exists and is not a directory (from command line --data-dir)")
    assert run_main(capsys, "tail", "--data-dir", "afile/redis") == (
        USAGE, (f"weir: config error: redis.data_dir: cannot create 'afile/redis': {str(tmp_path / 'afile')!r} "
               "is not a directory (from command line --data-dir)"))


def test_config_that_is_a_directory_or_not_utf8(capsys, tmp_path: Path) -> None:
    assert run_main(capsys, "run", "--config", str(tmp_path)) == (
        USAGE, f"weir: config error: config file {tmp_path}: is a directory, not a TOML file")
    (tmp_path / "weir.toml").write_bytes(b"# caf\xe9\n[redis]\n")
    assert run_main(capsys, "run", "--config", "weir.toml") == (
        USAGE, "weir: config error: config file weir.toml: not UTF-8 text (byte 0xe9 on line 1); TOML files are UTF-8")


def test_log_level_from_the_environment_names_the_variable(capsys, monkeypatch) -> None:
    monkeypatch.setenv("WEIR_LOG_LEVEL", "LOUD")
    assert run_main(capsys, "run", "--redis-url", UNREACHABLE) == (
        USAGE, "weir: config error: log_level: expected DEBUG, INFO, WARNING or ERROR, got 'LOUD' (from environment WEIR_LOG_LEVEL)")


@pytest.mark.parametrize("argv", [["chaos"], ["chaos", "all"]])
def test_chaos_with_no_scenario_to_run_is_a_usage_error(capsys, monkeypatch, argv: list[str]) -> None:
    import weir.chaos.suite

    monkeypatch.setattr(weir.chaos.suite, "load_registry", lambda path=None: {})
    assert run_main(capsys, *argv) == (
        USAGE, "weir chaos: no scenarios to run: the registry names none (give --random N or --schedule)")


def test_a_bug_inside_the_service_still_shows_its_traceback(monkeypatch) -> None:
    """Only the embedded Redis failing to start is turned into one line; anything else propagates."""
    import weir.tail

    async def broken(config, args):
        raise ValueError("a bug")

    monkeypatch.setattr(weir.tail, "run_tail", broken)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["tail", "--redis-url", UNREACHABLE])


# -- the real entry point -------------------------------------------------------------------------


def test_process_usage_and_config_errors_are_one_line() -> None:
    assert run_process("demo", "--events", "-5") == (
        USAGE, "weir demo: argument --events: expected a positive integer, got '-5'; see weir demo --help")
    assert run_process("run", "--redis-url", UNREACHABLE, env={"WEIR_REDIS_SOCKET_TIMEOUT": "-1"}) == (
        USAGE, "weir: config error: redis.socket_timeout: must be positive, got -1.0 (from environment WEIR_REDIS_SOCKET_TIMEOUT)")
    assert run_process("chaos", "--random", "-1") == (
        USAGE, "weir chaos: argument --random: expected 0 or a positive integer, got '-1'; see weir chaos --help")


def test_tail_against_a_redis_that_is_not_there() -> None:
    port = free_port()
    assert run_process("tail", "--redis-url", f"redis://127.0.0.1:{port}/0") == (
        FAILURE, f"weir tail: cannot reach redis at redis://127.0.0.1:{port}/0: Connection refused")
    # The password in the URL is not printed.
    assert run_process("tail", "--redis-url", f"redis://:hunter2@127.0.0.1:{port}/0") == (
        FAILURE, f"weir tail: cannot reach redis at redis://***@127.0.0.1:{port}/0: Connection refused")


def test_embedded_redis_that_cannot_start_is_one_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    (data_dir / "appendonly.aof").write_bytes(b"not an AOF\n*junk")  # the server refuses it and exits
    code, line = run_process("tail", "--data-dir", str(data_dir))
    assert code == FAILURE
    assert line.startswith(f"weir: cannot start the embedded Redis (redis.data_dir {str(data_dir)!r}): "
                           f"{SERVER_BINARIES[0].path.name} exited with 1 at start: "), line
    # The bytes are kept: Redis 6.2 leaves the file, Valkey first moves it into its appendonlydir/.
    kept = [path for path in (data_dir / "appendonly.aof", data_dir / "appendonlydir" / "appendonly.aof") if path.exists()]
    assert [path.read_bytes() for path in kept] == [b"not an AOF\n*junk"]


def test_a_data_dir_that_cannot_be_created_is_one_line(capsys) -> None:
    # /proc refuses new directories, even to root: the embedded Redis's start says so in one line.
    assert run_main(capsys, "run", "--data-dir", "/proc/weir-test") == (
        FAILURE, ("weir: cannot start the embedded Redis (redis.data_dir '/proc/weir-test'): cannot use "
                  "'/proc/weir-test' as its data directory: No such file or directory"))
