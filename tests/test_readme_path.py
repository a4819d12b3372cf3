"""The README's commands in the order a new user types them, each as a subprocess in a fresh directory.

``weir demo`` (shortened with ``--events``/``--rate 0``, as tests/test_demo.py does), then ``weir tail
--count 5``: the demo says where its data went and how to read it, and following that advice works;
``weir tail`` with nothing to read says so in one line with its own exit code, never a traceback.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
from pathlib import Path

import pytest
import trio

from weir.tail import EXIT_NO_REDIS

from helpers import wait_for, weir_args, weir_process

pytestmark = pytest.mark.integration

TIMEOUT = 60.0
EVENTS = 200


def environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("WEIR_")}  # the defaults


async def weir(cwd: Path, *argv: str) -> tuple[int, str, str]:
    """``python -m weir ARGV`` in ``cwd``: (exit code, stdout, stderr); never a traceback."""
    with trio.fail_after(TIMEOUT):  # a cancelled run_process kills the child
        result = await trio.run_process([sys.executable, "-m", "weir", *argv], cwd=cwd, env=environment(),
                                        capture_stdout=True, capture_stderr=True, check=False)
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    assert "Traceback" not in stderr and "ExceptionGroup" not in stderr, stderr
    return result.returncode, stdout, stderr


def advice(stderr: str) -> list[str]:
    """The ``weir tail …`` command the demo's last line suggests, as argv (after ``weir``)."""
    last = stderr.rstrip("\n").split("\n")[-1]
    found = re.search(r"then: weir (tail .*)$|read it with: weir (tail .*)$", last)
    assert found, stderr
    return shlex.split(found[1] or found[2])


def assert_tail_lines(stdout: str, partitions: set[str], count: int) -> None:
    entries = [json.loads(line) for line in stdout.splitlines()]
    assert {entry["partition"] for entry in entries} == partitions
    assert all(sum(entry["partition"] == p for entry in entries) == count for p in partitions), stdout
    assert all("event" in entry and "decode_error" not in entry for entry in entries), stdout  # decoded


async def test_demo_with_a_kept_data_dir_then_tail_as_the_readme_says(tmp_path: Path) -> None:
    code, _, demo_stderr = await weir(tmp_path, "demo", "--data-dir", "weir-data", "--events", str(EVENTS), "--rate", "0")
    assert code == 0, demo_stderr
    assert demo_stderr.rstrip("\n").split("\n")[-1] == (
        "weir demo: the data is kept in weir-data; read it with: weir tail --data-dir weir-data --count 5")
    # The README's next line, verbatim: the default data directory is ./weir-data.
    code, stdout, stderr = await weir(tmp_path, "tail", "--count", "5")
    assert (code, stderr) == (0, "")
    assert_tail_lines(stdout, {"1", "2"}, 5)
    # The command the demo suggested reads the same.
    code, stdout_again, _ = await weir(tmp_path, *advice(demo_stderr))
    assert code == 0 and stdout_again == stdout


async def test_demo_without_a_data_dir_says_it_was_deleted_and_tail_says_there_is_nothing(tmp_path: Path) -> None:
    code, _, stderr = await weir(tmp_path, "demo", "--events", str(EVENTS), "--rate", "0")
    assert code == 0, stderr
    assert stderr.rstrip("\n").split("\n")[-1] == (
        "weir demo: its Redis data was in a temporary directory, now deleted; to keep it, run "
        "weir demo --data-dir weir-data, then: weir tail --data-dir weir-data --count 5")
    assert not (tmp_path / "weir-data").exists()
    code, stdout, stderr = await weir(tmp_path, "tail", "--count", "5")
    assert (code, stdout) == (EXIT_NO_REDIS, "")
    assert stderr == (
        f"weir tail: no Redis to read: redis.url is not set and the data directory {str(tmp_path / 'weir-data')!r} "
        "does not exist; run `weir run` (or `weir demo --data-dir DIR`) first, or give --data-dir DIR or --redis-url URL\n")


async def test_tail_of_a_data_dir_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    code, stdout, stderr = await weir(tmp_path, "tail", "--data-dir", "/nonexistent", "--count", "5")
    assert (code, stdout) == (EXIT_NO_REDIS, "")
    assert stderr.startswith("weir tail: no Redis to read: redis.url is not set and the data directory '/nonexistent' "
                             "does not exist;") and stderr.count("\n") == 1, stderr


async def test_atproto_demo_names_its_source_for_tail(tmp_path: Path) -> None:
    code, _, stderr = await weir(tmp_path, "demo", "--network", "atproto", "--data-dir", "kept",
                                 "--events", str(EVENTS), "--rate", "0")
    assert code == 0, stderr
    assert "one commit frame carries one or more records" in stderr
    argv = advice(stderr)
    assert argv == ["tail", "--data-dir", "kept", "--source", "atproto", "--count", "5"]
    code, stdout, _ = await weir(tmp_path, *argv)
    assert code == 0
    assert [json.loads(line)["partition"] for line in stdout.splitlines()] == ["firehose-127.0.0.1"] * 5


async def test_sigint_on_the_demo_prints_its_summary_on_a_line_of_its_own(tmp_path: Path) -> None:
    """Stopped half way: it drains, prints a summary saying so and where the data is, and exits 0."""
    log_path = tmp_path / "demo.log"
    args = weir_args("demo", "--data-dir", "weir-data", "--events", "100000", "--rate", "200")
    async with weir_process(args, log_path, cwd=tmp_path) as process:
        await wait_for(lambda: re.search(r"[1-9][\d,]* persisted", log_path.read_text()) is not None,
                       timeout=TIMEOUT, what="the demo to persist events")
        process.send_signal(signal.SIGINT)
        with trio.fail_after(TIMEOUT):
            code = await process.wait()
    stderr = log_path.read_text()
    assert code == 0, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.rstrip("\n").split("\n")
    assert re.fullmatch(r"weir demo: stopped early: [\d,]+ events persisted in .*restarts 0", lines[-2]), stderr
    assert lines[-1].startswith("weir demo: the data is kept in weir-data"), stderr


def test_ci_runs_the_readmes_test_command() -> None:
    """`.ci/run` runs exactly the README's second set-up command (the one that installs and tests)."""
    root = Path(__file__).resolve().parent.parent
    blocks = re.findall(r"```sh\n(.*?)\n```", (root / "README.md").read_text(), re.S)
    test_command = next(block for block in blocks if "pytest" in block)
    assert test_command in (root / ".ci" / "run").read_text()
