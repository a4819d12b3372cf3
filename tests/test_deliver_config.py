"""The [deliver] configuration: every mistake is one line naming the setting and its origin."""

from __future__ import annotations

import json
import sys

import pytest

from weir.cli import main
from weir.config import ConfigError, load_config

GOOD = {"source": "farcaster", "directory": "out"}
HOOK = {"source": "farcaster", "target": "webhook", "url": "https://example.com/hook", "secret": "SECRET-key"}


def load(tmp_path, toml: str):
    path = tmp_path / "weir.toml"
    path.write_text(toml)
    return load_config(path, environ={})


def test_pipelines_are_read_from_toml_tables(tmp_path):
    config = load(tmp_path, """
[deliver]
claim_idle = 30
max_deliveries = 7

[[deliver.pipelines]]
source = "farcaster"
partitions = ["1", "2"]
compression = "snappy"
row_group_rows = 5000
file_age = 5

[[deliver.pipelines]]
name = "chain-files"
source = "ethereum"
""")
    first, second = config.deliver.pipelines
    assert (first.source, first.partitions, first.compression, first.row_group_rows, first.file_age) == (
        "farcaster", ("1", "2"), "snappy", 5000, 5.0)
    assert second.name == "chain-files" and second.compression == "zstd" and second.target == "parquet"
    assert config.deliver.claim_idle == 30.0 and config.deliver.max_deliveries == 7


@pytest.mark.parametrize(("pipeline", "settings", "message"), [
    ({"compression": "lz4"}, {}, "deliver.pipelines: [0]: compression: expected one of zstd, snappy, gzip, none, got 'lz4'"),
    ({"target": "kafka"}, {}, "deliver.pipelines: [0]: target: unknown target 'kafka'; known: parquet, nats, webhook"),
    ({"source": ""}, {}, "deliver.pipelines: [0]: source: required"),
    ({"partitions": ["a:b"]}, {}, "deliver.pipelines: [0]: partition 'a:b' cannot be used in a Redis key"),
    ({"partitions": ["1/../../x"]}, {},
     "deliver.pipelines: [0]: partition '1/../../x' cannot be a directory name: it contains '/'"),
    ({"row_group_rows": 0}, {}, "deliver.pipelines: [0]: row_group_rows: must be at least 1, got 0"),
    ({"start": "1-0"}, {}, "deliver.pipelines: [0]: start: expected '0' (the whole stream) or '$' (from now)"),
    ({"file_age": 30}, {"claim_idle": "60"}, "deliver.pipelines: [0]: file_age: must be at most deliver.claim_idle / 3 (20)"),
    ({}, {"max_deliveries": "0"}, "deliver.max_deliveries: must be at least 1, got 0"),
    ({}, {"claim_idle": "-1"}, "deliver.claim_idle: must be positive"),
    # Past what Redis takes (XAUTOCLAIM's min-idle, XREADGROUP's BLOCK): each actor crashed on its first call.
    ({}, {"claim_idle": "1e16"}, "deliver.claim_idle: must be at most 31536000 (a year), got 1e+16"),
    ({"file_age": 0.0003}, {"claim_idle": "0.001"},
     "deliver.claim_idle: must be at least 1 (a commit, fsync and rename, must fit in a third of it), got 0.001"),
    ({}, {"block_ms": str(2**63)}, "deliver.block_ms: must be at most 60000 (the socket waits as long), got 9223372036854775808"),
    ({}, {"read_count": str(10**15)}, "deliver.read_count: must be at most 100000 (a batch is held in memory), got 1000000000000000"),
    ({"colour": "red"}, {}, "deliver.pipelines[0].colour: unknown setting"),
    (dict(HOOK, url="ftp://user:SECRET@h/x"), {}, "deliver.pipelines: [0]: url: expected the endpoint's http:// or "
                                                   "https:// URL, got 'ftp://***@h/x'"),
    (dict(HOOK, url="https://user:SECRET@h/x"), {}, "deliver.pipelines: [0]: url: credentials in the URL are not "
                                                     "taken (requests are authenticated by their HMAC signature), "
                                                     "got 'https://***@h/x'"),
    (dict(HOOK, url="http://127.0.0.1:abc/"), {}, "deliver.pipelines: [0]: url: expected the endpoint's http:// or "
                                                  "https:// URL, got 'http://127.0.0.1:abc/'"),
    (dict(HOOK, url="http://[::1/x"), {}, "deliver.pipelines: [0]: url: expected the endpoint's http:// or https:// URL"),
    (dict(HOOK, secret=""), {}, "deliver.pipelines: [0]: secret: required (the key requests are signed with), or secret_env"),
    (dict(HOOK, secret_env="X"), {}, "deliver.pipelines: [0]: secret, secret_env: set one of them, not both"),
    (dict(HOOK, secret="", secret_env="1X"), {},
     "deliver.pipelines: [0]: secret_env: expected an environment variable's name"),
    (dict(HOOK, timeout=30), {"claim_idle": "60"},
     "deliver.pipelines: [0]: timeout: must be at most deliver.claim_idle / 3 (20), got 30"),
    (dict(HOOK, concurrency=0), {}, "deliver.pipelines: [0]: concurrency: must be at least 1, got 0"),
    (dict(HOOK, events_per_request=0), {}, "deliver.pipelines: [0]: events_per_request: must be at least 1, got 0"),
    (dict(HOOK, retry_initial=9), {}, "deliver.pipelines: [0]: retry_initial: must be between 0 and retry_max (5), got 9"),
    (dict(HOOK, breaker_max_reset=1), {},
     "deliver.pipelines: [0]: breaker_max_reset: must be at least breaker_reset (5), got 1"),
    (dict(HOOK, events=["Transfer"]), {},
     "deliver.pipelines: [0]: events: only ethereum entries have it (this pipeline's source is 'farcaster')"),
    (dict(HOOK, fids=["x"]), {}, "deliver.pipelines[0].fids: expected a list of integers, got ['x']"),
])
def test_a_bad_setting_is_one_line_naming_it(pipeline, settings, message):
    overrides = {"deliver.pipelines": json.dumps([dict(GOOD, **pipeline)])}
    overrides.update({f"deliver.{key}": value for key, value in settings.items()})
    with pytest.raises(ConfigError) as caught:
        load_config(environ={}, overrides=overrides)
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value) and "SECRET" not in str(caught.value)  # a webhook's secret: never shown


def test_two_pipelines_with_one_name_are_refused():
    overrides = {"deliver.pipelines": json.dumps([GOOD, GOOD])}
    with pytest.raises(ConfigError, match=r"\[1\]: name 'farcaster-parquet' is used by two pipelines"):
        load_config(environ={}, overrides=overrides)


def test_two_pipelines_reading_one_source_in_one_group_are_refused():
    hooks = [dict(HOOK, name="a", group="hooks"), dict(HOOK, name="b", group="hooks", url="https://example.org/hook")]
    with pytest.raises(ConfigError, match=r"\[1\]: group 'hooks' already reads farcaster for another pipeline"):
        load_config(environ={}, overrides={"deliver.pipelines": json.dumps(hooks)})
    hooks[1]["source"] = "ethereum"  # another source: another stream, so the same group name is fine
    load_config(environ={}, overrides={"deliver.pipelines": json.dumps(hooks)})


def test_two_pipelines_writing_one_source_into_one_directory_are_refused():
    overrides = {"deliver.pipelines": json.dumps([dict(GOOD, name="a"), dict(GOOD, name="b", group="other")])}
    with pytest.raises(ConfigError, match=r"\[1\]: directory: 'out' already receives farcaster from another pipeline"):
        load_config(environ={}, overrides=overrides)


def test_weir_deliver_without_a_pipeline_is_a_usage_error(capsys):
    assert main(["deliver", "--redis-url", "redis://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("weir: config error: deliver.pipelines: no delivery pipeline is configured") and err.count("\n") == 1


def test_weir_deliver_help_names_its_options(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["deliver", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--consumer NAME" in out and "WEIR_DELIVER_PIPELINES" in out


@pytest.mark.parametrize(("target", "module", "package"), [("parquet", "pyarrow", "pyarrow"), ("nats", "nats", "nats-py"),
                                                       ("webhook", "httpx", "httpx")])
def test_weir_deliver_without_its_targets_package_names_the_extra(capsys, monkeypatch, target, module, package):
    monkeypatch.setitem(sys.modules, module, None)  # as if weir[<target>] were not installed
    pipeline = {"source": "farcaster", "target": target, "directory": "out"}
    if target == "webhook":  # its required settings, so that only the missing package is wrong
        pipeline.update(url="http://127.0.0.1:1/hook", secret="s")
    pipelines = json.dumps([pipeline])
    assert main(["deliver", "--redis-url", "redis://127.0.0.1:1", "--set", f"deliver.pipelines={pipelines}"]) == 2
    assert capsys.readouterr().err == (f"weir: config error: deliver.pipelines: the {target} target needs {package}: "
                                       f"pip install 'weir[{target}]'\n")


NATS = {"source": "farcaster", "target": "nats", "url": "nats://127.0.0.1:4222"}


def test_a_nats_pipeline_is_read_with_its_defaults(tmp_path):
    config = load(tmp_path, """
[[deliver.pipelines]]
source = "atproto"
target = "nats"
url = "nats://weir:secret@bus:4222"
file_age = 60   # a Parquet option: not checked against claim_idle for a NATS pipeline
""")
    pipe = config.deliver.pipelines[0]
    assert (pipe.subject, pipe.stream, pipe.duplicate_window, pipe.in_flight) == (
        "weir.{source}.{partition}.{kind}", "WEIR", 300.0, 5000)
    assert pipe.nats_stream_subjects() == ("weir.>",)


@pytest.mark.parametrize(("pipeline", "message"), [
    ({"subject": "weir.{network}"}, "deliver.pipelines: [0]: subject: 'weir.{network}': unknown field {network}; "
                                    "known: {source}, {partition}, {kind}"),
    ({"subject": "weir.{kind:x}"}, "deliver.pipelines: [0]: subject: 'weir.{kind:x}': {kind} takes no format spec"),
    ({"subject": "weir..{kind}"}, "deliver.pipelines: [0]: subject: 'weir..{kind}': every dot-separated token"),
    ({"subject": "{source}.{kind}"}, "deliver.pipelines: [0]: stream_subjects: required when subject starts with a field"),
    ({"stream_subjects": ["other.>"]}, "deliver.pipelines: [0]: stream_subjects: ['other.>'] do not cover the subject"),
    ({"stream": "a.b"}, "deliver.pipelines: [0]: stream: expected a name of letters, digits, '-' and '_', got 'a.b'"),
    ({"url": "http://user:pw@bus:4222"}, "deliver.pipelines: [0]: url: expected nats://host:port or tls://host:port, "
                                          "got 'http://***@bus:4222'"),
    ({"duplicate_window": 0}, "deliver.pipelines: [0]: duplicate_window: must be positive, got 0"),
    ({"in_flight": 0}, "deliver.pipelines: [0]: in_flight: must be at least 1, got 0"),
    ({"ack_timeout": -1}, "deliver.pipelines: [0]: ack_timeout: must be positive, got -1"),
])
def test_a_bad_nats_setting_is_one_line_naming_it(pipeline, message):
    with pytest.raises(ConfigError) as caught:
        load_config(environ={}, overrides={"deliver.pipelines": json.dumps([dict(NATS, **pipeline)])})
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value) and "pw" not in str(caught.value)


def test_a_webhook_pipeline_is_read_with_its_filters_and_defaults(tmp_path):
    config = load(tmp_path, """
[[deliver.pipelines]]
name = "transfers"
source = "ethereum"
target = "webhook"
url = "https://example.com/hook"
secret_env = "HOOK_SECRET"
contracts = ["0x00000000000000000000000000000000000000aB"]
events = ["Transfer"]
""")
    pipe = config.deliver.pipelines[0]
    assert (pipe.secret_env, pipe.contracts, pipe.events, pipe.kinds) == (
        "HOOK_SECRET", ("0x00000000000000000000000000000000000000aB",), ("Transfer",), ())
    assert (pipe.timeout, pipe.concurrency, pipe.attempts, pipe.breaker_failures) == (10.0, 8, 3, 5)
    assert pipe.events_per_request == 1  # one event per request unless asked: today's receivers keep working


def test_an_unset_secret_variable_stops_weir_deliver_with_one_line_naming_it(capsys, monkeypatch):
    monkeypatch.delenv("WEIR_TEST_UNSET_HOOK_SECRET", raising=False)
    pipelines = json.dumps([dict(HOOK, secret="", secret_env="WEIR_TEST_UNSET_HOOK_SECRET", partitions=["1"])])
    # Checked when the pipelines are built, before Redis is read: none needs to be there.
    assert main(["deliver", "--redis-url", "redis://127.0.0.1:1", "--set", "metrics.port=0",
                 "--set", f"deliver.pipelines={pipelines}"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "weir: config error: deliver.pipelines: farcaster-webhook: secret_env: the environment variable "
        "'WEIR_TEST_UNSET_HOOK_SECRET' is not set (or empty)")
