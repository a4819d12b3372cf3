"""weir's dependencies: every package weir/ imports is declared in pyproject.toml, and a network
whose extra is not installed stops weir with one config line naming the ``pip install`` (here with
the extra's modules hidden from a subprocess; tests/test_install.py does it on a real base install).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from weir.networks import network_class

from helpers import ROOT

TIMEOUT = 60


def imported_modules(package: Path) -> dict[str, set[str]]:
    """Top-level module name -> the files of ``package`` that import it (absolute imports only)."""
    found: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.partition(".")[0], set()).add(str(path.relative_to(package.parent)))
    return found


def distribution_name(requirement: str) -> str:
    """``'eth-hash[pycryptodome]>=0.5,<0.9'`` -> ``'eth-hash'`` (normalised as PEP 503 does)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert name, requirement
    return re.sub(r"[-_.]+", "-", name[0]).lower()


def declared() -> dict[str, set[str]]:
    """Distribution name -> where pyproject.toml declares it: ``base`` or the extras' names."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    where: dict[str, set[str]] = {}
    for group, requirements in [("base", project["dependencies"]), *project["optional-dependencies"].items()]:
        for requirement in requirements:
            where.setdefault(distribution_name(requirement), set()).add(group)
    return where


def test_every_third_party_module_weir_imports_is_declared():
    providers = importlib.metadata.packages_distributions()
    declarations = declared()
    third_party = {module: files for module, files in imported_modules(ROOT / "weir").items()
                   if module not in sys.stdlib_module_names and module != "weir"}
    assert {"eth_abi", "outcome", "h2", "zstandard"} <= third_party.keys()  # the audit sees them
    undeclared = {module: sorted(files) for module, files in third_party.items()
                  if not any(distribution_name(d) in declarations for d in providers.get(module, []))}
    assert undeclared == {}


def test_each_network_stack_is_in_its_extra_not_the_base_install():
    declarations = declared()
    assert {"eth-abi", "eth-utils", "eth-hash"} <= {d for d, groups in declarations.items() if groups == {"ethereum"}}
    assert {"libipld", "zstandard"} <= {d for d, groups in declarations.items() if groups == {"atproto"}}
    assert declarations["trio-websocket"] == {"ethereum", "atproto"}  # both speak WebSocket; Farcaster is gRPC
    assert declarations["weir"] >= {"all", "test"}  # all = every network's extra; the tests install all of them
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert project["all"] == ["weir[ethereum,atproto]"]
    assert any(requirement.startswith("weir[all") for requirement in project["test"])


def test_zero_x_dependencies_have_an_upper_bound():
    """A 0.x release may break on any minor version: each is capped below one (constraints.txt pins the tested set)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for group in project["optional-dependencies"].values() for r in group]
    unbounded = [r for r in requirements if re.search(r">=0\.", r) and "<" not in r]
    assert unbounded == []


def test_the_constraints_file_satisfies_every_declared_requirement():
    """constraints.txt (pip freeze of a ``.[test]`` venv) pins a version inside each declared range."""
    pinned = {distribution_name(line): line.partition("==")[2]
              for line in (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"base": project["dependencies"], **project["optional-dependencies"]}
    for group in ("base", "ethereum", "atproto", "fast", "test"):  # not bench's and dev's tools
        for requirement in map(Requirement, groups[group]):
            if requirement.name != "weir":
                assert requirement.specifier.contains(pinned[distribution_name(requirement.name)]), (group, str(requirement))


def test_the_chaos_suite_does_not_need_hypothesis_at_run_time():
    """Only ``weir.chaos.schedules()`` (a strategy for property tests, which have hypothesis) imports it."""
    code = "import sys; import weir.chaos.suite; print('hypothesis' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    assert (done.returncode, done.stdout) == (0, "False\n"), done.stderr


def weir_without(hidden: str, *argv: str, cwd: Path) -> tuple[int, str]:
    """``weir ARGV`` in a Python where importing ``hidden`` fails as if it were not installed: (exit code, stderr)."""
    code = ("import sys; sys.modules[sys.argv[1]] = None\n"  # None in sys.modules: ModuleNotFoundError on import
            "from weir.cli import main; sys.exit(main(sys.argv[2:]))")
    env = {key: value for key, value in os.environ.items() if not key.startswith("WEIR_")}
    done = subprocess.run([sys.executable, "-c", code, hidden, *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)
    return done.returncode, done.stderr


# Nothing is reached even if the check failed to stop it: the chain is a closed local port.
ETHEREUM_ONLY = ("--set", "farcaster.enabled=false", "--set", "ethereum.enabled=true",
                 "--set", "ethereum.chains=" + json.dumps([{"chain_id": 1, "url": "ws://127.0.0.1:9"}]))
ATPROTO_ONLY = ("--set", "farcaster.enabled=false", "--set", "atproto.enabled=true", "--set", "atproto.url=ws://127.0.0.1:9")


def missing_extra_line(network: str, module: str) -> str:
    return (f"weir: config error: {network}.enabled: the {network} network's packages are not installed "
            f"(no module named {module!r}): pip install 'weir[{network}]'\n")


@pytest.mark.parametrize(("hidden", "network", "argv"), [
    ("eth_abi", "ethereum", ("run", *ETHEREUM_ONLY)),
    ("trio_websocket", "ethereum", ("run", *ETHEREUM_ONLY)),
    ("zstandard", "atproto", ("run", *ATPROTO_ONLY)),
    ("libipld", "atproto", ("demo", "--network", "atproto")),
])
def test_a_network_without_its_extra_is_one_config_line(tmp_path, hidden, network, argv):
    code, stderr = weir_without(hidden, *argv, cwd=tmp_path)
    assert (code, stderr) == (2, missing_extra_line(network, hidden))
    assert list(tmp_path.iterdir()) == []  # stopped before any Redis or simulator started


def test_the_chaos_suite_without_every_extra_is_one_line(tmp_path):
    code, stderr = weir_without("eth_abi", "chaos", "--list", cwd=tmp_path)
    assert (code, stderr) == (2, "weir: chaos: the chaos suite needs every network's packages "
                                 "(no module named 'eth_abi'): pip install 'weir[all]'\n")


def test_a_broken_weir_module_is_not_reported_as_a_missing_extra(monkeypatch):
    """Only a third-party module missing means an extra is; weir's own missing is a bug, raised as it is."""
    monkeypatch.setitem(sys.modules, "weir.networks.ethereum", None)
    with pytest.raises(ModuleNotFoundError) as raised:
        network_class("ethereum")
    assert raised.value.name == "weir.networks.ethereum"
