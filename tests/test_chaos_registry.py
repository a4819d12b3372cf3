"""Where the chaos scenarios come from: the built-in ones the package ships, a user's file, and
``weir chaos`` from a non-editable install run outside the checkout."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from weir.chaos.registry import ScenariosError, load_registry, load_scenarios_file
from weir.chaos.scenario import Scenario, fault
from weir.chaos.scenarios import builtin
from weir.chaos.schedule import Schedule

from helpers import copy_package_source

ROOT = Path(__file__).resolve().parents[1]

USER_FILE = '''
from weir.chaos.scenario import Scenario, fault
from weir.chaos.schedule import Schedule

def registry():
    return [Scenario(name="{name}", label="redis kill 3 s",
                     schedule=Schedule(seed=101, faults=[fault("redis", "kill", 1.0, 3.0)]))]
'''


def test_builtin_scenarios_have_unique_names_and_targets_their_source_provides():
    scenarios = builtin()
    assert len({s.name for s in scenarios}) == len(scenarios) > 0
    assert list(load_registry(ROOT / "chaos" / "scenarios.py")) == [s.name for s in scenarios]  # the example adds none


def test_a_scenario_on_a_target_its_source_lacks_is_refused():
    import attrs

    from weir.chaos.farcaster import FARCASTER

    without_hub = attrs.evolve(FARCASTER, network_targets=("hub_link",))
    with pytest.raises(ValueError, match="the farcaster source has no target hub "):
        Scenario(name="x", label="x", source=without_hub, schedule=Schedule(faults=[fault("hub", "drop_streams", 1.0)]))


def test_a_users_file_adds_scenarios_after_the_builtin_ones(tmp_path, monkeypatch):
    path = tmp_path / "mine.py"
    path.write_text(USER_FILE.format(name="my-long-redis-kill"))
    (mine,) = load_scenarios_file(path)
    assert mine.name == "my-long-redis-kill" and mine.schedule.end == 4.0
    registry = load_registry(path)
    assert list(registry)[-1] == "my-long-redis-kill" and len(registry) == len(builtin()) + 1
    # without a path: ./chaos/scenarios.py of the current directory, if there is one
    monkeypatch.chdir(tmp_path)
    assert "my-long-redis-kill" not in load_registry()
    (tmp_path / "chaos").mkdir()
    shutil.copy(path, tmp_path / "chaos" / "scenarios.py")
    assert "my-long-redis-kill" in load_registry()


@pytest.mark.parametrize("content, error", [
    (USER_FILE.format(name="redis-kill"), "two scenarios are named 'redis-kill'"),
    ("def registry():\n    return [42]\n", "not a weir.chaos.scenario.Scenario"),
    ("import nothing_of_that_name\n", "did not load"),
])
def test_a_broken_users_file_is_an_error(tmp_path, content, error):
    path = tmp_path / "bad.py"
    path.write_text(content)
    with pytest.raises(ScenariosError, match=re.escape(error)):
        load_registry(path)
    with pytest.raises(ScenariosError, match="no scenarios file"):
        load_registry(tmp_path / "missing.py")


def test_the_readme_counts_the_scenarios_weir_chaos_lists():
    readme = (ROOT / "README.md").read_text()
    counts = [int(n) for n in re.findall(r"(\d+) named scenarios", readme)]
    assert counts, "the README no longer says how many named scenarios the chaos suite has"
    assert set(counts) == {len(load_registry(ROOT / "chaos" / "scenarios.py"))}


@pytest.mark.integration
def test_weir_chaos_runs_from_a_non_editable_install_outside_the_checkout(tmp_path):
    """``pip install .`` (no dependencies: the new venv reads this venv's site-packages through a
    .pth, so nothing is downloaded), then ``weir chaos`` from a directory with no checkout."""
    source = copy_package_source(tmp_path / "src")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # after the new venv's own site-packages: its weir is the installed one, not this checkout's
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(source)],
                   check=True, timeout=180)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(venv / "bin" / "weir"), *args], cwd=elsewhere, capture_output=True, text=True, timeout=timeout)

    where = subprocess.run([python, "-c", "import weir; print(weir.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(site), where
    listed = run("chaos", "--list")
    assert listed.returncode == 0, listed.stderr
    names = re.findall(r"^(\S+) ", listed.stdout, re.MULTILINE)
    assert names == [s.name for s in builtin()]
    # a user's ./chaos/scenarios.py is picked up there, and a scenario resolves to its data
    (elsewhere / "chaos").mkdir()
    (elsewhere / "chaos" / "scenarios.py").write_text(USER_FILE.format(name="my-long-redis-kill"))
    assert re.findall(r"^(\S+) ", run("chaos", "--list").stdout, re.MULTILINE)[-1] == "my-long-redis-kill"
    resolve = ("from weir.chaos.registry import load_registry\n"
               "s = load_registry()['redis-down-at-start']\n"
               "print(sorted((p, len(o.events)) for p, o in s.source.offered(s.load()).items()))")
    resolved = subprocess.run([python, "-c", resolve], cwd=elsewhere, capture_output=True, text=True, timeout=60)
    # 500 history + 1000/s for 0.5 s of lead + the 2 s schedule + the 1 s tail, per shard
    assert resolved.stdout.strip() == "[('1', 4000), ('2', 4000)]", resolved.stderr
    # and one scenario runs end to end from the installed package (~7 s)
    ran = run("chaos", "redis-down-at-start", timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "| redis-down-at-start |" in ran.stdout and "1/1 scenarios passed" in ran.stdout


def test_the_scenarios_do_not_need_the_engine():
    """No import circle: the scenario data and the registry load with the engine unimportable."""
    code = ("import sys; sys.modules['weir.chaos.suite'] = None\n"
            "from weir.chaos.registry import load_registry\n"
            "print(len(load_registry()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(builtin())


def test_generated_schedules_cycle_through_every_source_and_draw_its_fault_kinds():
    from weir.chaos.sources import SOURCES
    from weir.chaos.suite import random_scenarios

    scenarios = random_scenarios(2 * len(SOURCES), 7)
    assert [s.source for s in scenarios] == [*SOURCES.values()] * 2
    assert random_scenarios(2 * len(SOURCES), 7) == scenarios  # the same seed, the same schedules
    for scenario in scenarios:
        allowed = {"redis", "redis_link", "weir", *scenario.source.network_targets}
        assert {f.target for f in scenario.schedule.faults} <= allowed
    drawn = {f.target for s in random_scenarios(12 * len(SOURCES), 3) for f in s.schedule.faults}
    for source in SOURCES.values():
        assert drawn & set(source.network_targets), f"no generated fault on {source.name}'s targets"


def test_a_replayed_schedule_runs_against_the_source_its_targets_name():
    from weir.chaos.schedule import Schedule, TimedFault
    from weir.chaos.sources import SOURCES, source_of

    def on(*targets: str) -> Schedule:
        kinds = {"node": "drop", "hub": "drop_streams", "redis": "kill", "relay": "drop"}
        return Schedule(seed=1, faults=[TimedFault(target=t, kind=kinds.get(t, "latency"), start=0, duration=0,
                                                   params={"ms": 1} if t.endswith("_link") else {}) for t in targets])

    assert source_of(on("node", "redis")) is SOURCES["ethereum"]
    assert source_of(on("hub_link")) is SOURCES["farcaster"]
    assert source_of(on("redis"), default=SOURCES["ethereum"]) is SOURCES["ethereum"]
    with pytest.raises(ValueError, match="several sources"):
        source_of(on("node", "hub"))
    with pytest.raises(ValueError, match="firehose, jetstream"):  # the same targets: --source says which
        source_of(on("relay"))


def test_weir_chaos_source_choices_are_the_suite_sources():
    from weir.chaos.sources import SOURCES
    from weir.cli import build_parser

    chaos = next(a for a in build_parser()._subparsers._group_actions[0].choices["chaos"]._actions if a.dest == "source")
    assert set(chaos.choices) == set(SOURCES)
