"""What each source reports for progress, the reporter's log event and line, and the live terminal line.

Pure and in memory: readers fed the simulators' own events, statistics objects, a StringIO terminal.
"""

from __future__ import annotations

import io
import logging

import attrs
import pytest
from helpers import capture_json_logs

from weir.actors.atproto import AtprotoStats, FirehoseReader, JetstreamReader
from weir.actors.ethereum_reader import ChainStats
from weir.actors.farcaster import ShardReader, ShardStats
from weir.codecs.farcaster_gaps import GapDetector
from weir.live_line import ERASE_LINE, LiveLine, apart_from_logs
from weir.observability.progress import Progress, ProgressSample, ProgressTracker, describe, duration
from weir.observability.progress_report import ProgressSampler, log_progress, progress_line
from weir.sim.atproto_data import AtprotoSimConfig, generate_history
from weir.sim.farcaster_data import SnapchainSimConfig, generate_offered

HISTORY = generate_history(AtprotoSimConfig(seed=3, total=120))


def test_farcaster_reports_the_block_of_its_last_id_against_the_height_known() -> None:
    offered = generate_offered(SnapchainSimConfig(shards=1, seed=9), 1, 300)
    reader = ShardReader(shard=1, partition="1", detector=GapDetector(subscribed=[]), stats=ShardStats())
    reader.judge.announce_height((offered[-1][0] >> 14) + 50)  # GetInfo: the node is further on
    reader.stats.saw_height(reader.judge.height)
    reader.read([payload for _, payload in offered[:100]], 0.0)
    sample = reader.stats.progress_sample(1.0, 0.0)
    assert sample.position == offered[99][0] >> 14 and sample.head == (offered[-1][0] >> 14) + 50
    reader.stats.saw_height(3)  # a lower height (another node, an old answer) does not move the head back
    assert reader.stats.progress_sample(2.0, 0.0).head == sample.head


def test_a_firehose_reports_its_seq_and_the_relay_time_of_it() -> None:
    reader = FirehoseReader(partition="p", stats=AtprotoStats())
    chunk = reader.read([event.frame for event in HISTORY[:40]], 0.0)
    assert chunk is not None
    last = next(event for event in reversed(HISTORY[:40]) if event.seq == chunk.through)
    sample = reader.stats.progress_sample(1.0, last.time_us / 1e6 + 7.5)
    assert sample.position == chunk.through and sample.head is None
    assert sample.position_time == pytest.approx(last.time_us / 1e6, abs=1e-3)  # the frame's ISO time, to the ms
    tracker = ProgressTracker()
    tracker.observe(sample)
    assert tracker.progress().lag_seconds == pytest.approx(7.5, abs=1e-3)  # type: ignore[union-attr]


def test_jetstream_reports_its_time_us_against_the_wall_clock() -> None:
    messages = [message for event in HISTORY[:40] for _, message in event.jetstream]
    reader = JetstreamReader(partition="p", stats=AtprotoStats())
    chunk = reader.read(messages, 0.0)
    assert chunk is not None
    sample = reader.stats.progress_sample(1.0, 2_000_000_000.0)
    assert sample.position == chunk.through and sample.position_time == chunk.through / 1e6
    assert sample.head_time == 2_000_000_000.0
    assert AtprotoStats().progress_sample(1.0, 5.0).head_time is None  # nothing read: no lag claimed


def test_an_ethereum_head_keeps_its_time_and_one_known_by_number_is_estimated() -> None:
    stats = ChainStats(tip=100, tip_time=1200.0, block_time=12.0)
    stats.saw_head(110)  # eth_blockNumber: no header, no time
    assert stats.progress_sample(0.0, 0.0).head_time == 1200.0 + 10 * 12.0
    stats.saw_head(110, 1330.0)  # then its header: the real time
    stats.saw_head(105, 1260.0)  # an older head moves nothing
    sample = stats.progress_sample(0.0, 0.0)
    assert (sample.head, sample.head_time, sample.position, sample.position_time) == (110, 1330.0, 100, 1200.0)
    # With 6 confirmations weir emits up to the head less 6: that is the head it can reach.
    stats.confirmations = 6
    sample = stats.progress_sample(0.0, 0.0)
    assert (sample.head, sample.head_time) == (104, 1330.0 - 6 * 12.0)
    stats.tip, stats.tip_time = 104, 1250.0
    tracker = ProgressTracker()
    tracker.observe(stats.progress_sample(0.0, 0.0))
    assert tracker.progress().lag == 0 and tracker.progress().at_head  # type: ignore[union-attr]


@attrs.define
class View:
    name: str
    source: object
    progress: Progress | None = None


def test_the_reporter_samples_each_partition_and_logs_its_progress() -> None:
    behind = View("ethereum/1", ChainStats(head=1000, head_time=12_000.0, tip=400, tip_time=4_800.0))
    silent = View("other/1", object())  # a source without progress_sample is left alone
    sampler = ProgressSampler(window=10.0)
    sampler.sample([behind, silent], at=0.0, wall=0.0)
    behind.source.tip, behind.source.tip_time = 500, 6_000.0  # type: ignore[attr-defined]
    sampler.sample([behind, silent], at=2.0, wall=0.0)
    assert silent.progress is None and set(sampler.trackers) == {"ethereum/1"}
    progress = behind.progress
    assert progress is not None
    assert (progress.lag, progress.lag_seconds, progress.rate, progress.eta_seconds) == (500, 6000.0, 50.0, 10.0)
    with capture_json_logs() as logs:
        log_progress(behind, progress)
    (line,) = logs.of("progress")
    assert {key: line[key] for key in ("source", "partition", "unit", "position", "head", "lag", "lag_seconds", "rate",
                                       "eta_seconds", "catching_up", "at_head")} == {
        "source": "ethereum", "partition": "1", "unit": "block", "position": 500, "head": 1000, "lag": 500,
        "lag_seconds": 6000.0, "rate": 50.0, "eta_seconds": 10.0, "catching_up": True, "at_head": False}
    assert line["msg"] == "ethereum/1: block 500 of 1,000: 500 behind (1h40m), +50.0/s, ETA 10s"
    assert progress_line([behind, silent]) == "ethereum/1 block 500 of 1,000: 500 behind (1h40m), +50.0/s, ETA 10s"


def test_descriptions_at_the_head_and_without_one() -> None:
    at_head = Progress(position=7, head=7, lag=0, lag_seconds=0.0, rate=1.0, head_rate=1.0, eta_seconds=None)
    assert describe(at_head, "block") == "block 7 of 7: at the head"
    relay = Progress(position=42, head=None, lag=None, lag_seconds=90.0, rate=None, head_rate=None, eta_seconds=30.0)
    assert describe(relay) == "position 42: 1m30s behind, ETA 30s"
    live = attrs.evolve(relay, lag_seconds=0.4, eta_seconds=None, at_head=True)
    assert describe(live) == "position 42: at the head (0.4s)"
    assert describe(Progress(position=None, head=None, lag=None, lag_seconds=None, rate=None, head_rate=None,
                             eta_seconds=None)) == "nothing read yet"
    assert [duration(s) for s in (0.25, 42, 307, 11_100, 187_200)] == ["0.2s", "42s", "5m07s", "3h05m", "2d04h"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_line_redraws_itself_and_gets_out_of_the_way_of_log_lines() -> None:
    terminal = Terminal()
    handler = logging.StreamHandler(terminal)
    logger = logging.getLogger()
    logger.addHandler(handler)
    try:
        line = LiveLine(terminal)
        with apart_from_logs(line):
            line.show("one")
            line.show("two")
            logging.getLogger("weir.test").warning("a log line")
            line.show("three")
            line.end()
        logging.getLogger("weir.test").warning("after")  # the filter is gone: nothing erased
    finally:
        logger.removeHandler(handler)
    assert terminal.getvalue() == f"{ERASE_LINE}one{ERASE_LINE}two{ERASE_LINE}a log line\n{ERASE_LINE}three\nafter\n"


def test_off_a_terminal_the_live_line_prints_lines() -> None:
    stream = io.StringIO()
    line = LiveLine(stream)
    line.show("one")
    line.show("two")
    line.end()
    assert stream.getvalue() == "one\ntwo\n"


class Broken:
    def progress_sample(self, at: float, wall: float) -> ProgressSample:
        raise ZeroDivisionError("a bug in a user's network")


def test_a_source_whose_sample_fails_is_logged_once_and_the_others_go_on() -> None:
    broken, fine = View("mynet/a", Broken()), View("ethereum/1", ChainStats(head=10, tip=10))
    sampler = ProgressSampler(window=10.0)
    with capture_json_logs() as logs:
        for at in (0.0, 1.0, 2.0):
            sampler.sample([broken, fine], at=at, wall=0.0)
    (line,) = logs.of("progress_failed")
    assert line["source"] == "mynet" and line["partition"] == "a" and "ZeroDivisionError" in line["error"]
    assert broken.progress is None and fine.progress is not None and fine.progress.at_head
