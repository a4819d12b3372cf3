"""The named scenarios ``weir chaos`` knows: the built-in ones plus a user's own file.

A scenarios file is a Python file defining ``registry()``, which returns
:class:`~weir.chaos.scenario.Scenario` values (a list, or a dict by name). ``weir chaos`` loads
``--scenarios-file PATH``, or else ``./chaos/scenarios.py`` when the current directory has one (a
checkout's ``chaos/`` directory is that place). Its scenarios come after the built-in ones; a
name both define is an error, not a silent override.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping
from pathlib import Path

from weir.chaos.scenario import Scenario
from weir.chaos.scenarios import builtin

__all__ = ["DEFAULT_SCENARIOS_FILE", "ScenariosError", "load_registry", "load_scenarios_file"]

#: Loaded when no file is named and the current directory has it.
DEFAULT_SCENARIOS_FILE = Path("chaos") / "scenarios.py"


class ScenariosError(RuntimeError):
    """A scenarios file is missing, does not load, or names a scenario twice."""


def load_scenarios_file(path: Path) -> list[Scenario]:
    """The scenarios ``registry()`` of the Python file at ``path`` returns."""
    if not path.is_file():
        raise ScenariosError(f"no scenarios file {str(path)!r}")
    spec = importlib.util.spec_from_file_location(f"weir_user_scenarios_{abs(hash(str(path.resolve())))}", path)
    if spec is None or spec.loader is None:
        raise ScenariosError(f"{str(path)!r} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        found = module.registry()
    except Exception as exc:  # the user's code: whatever it raises is a broken file
        raise ScenariosError(f"{str(path)!r} did not load: {exc!r}") from exc
    scenarios: Iterable[object] = found.values() if isinstance(found, Mapping) else found
    scenarios = list(scenarios)
    wrong = [s for s in scenarios if not isinstance(s, Scenario)]
    if wrong:
        raise ScenariosError(f"{str(path)!r}: registry() returned {wrong[0]!r}, not a weir.chaos.scenario.Scenario")
    return scenarios  # type: ignore[return-value]


def load_registry(path: str | Path | None = None) -> dict[str, Scenario]:
    """Built-in scenarios, then those of ``path`` (default: ``./chaos/scenarios.py`` if present), by name."""
    extra: list[Scenario] = []
    if path is not None:
        extra = load_scenarios_file(Path(path))
    elif DEFAULT_SCENARIOS_FILE.is_file():
        extra = load_scenarios_file(DEFAULT_SCENARIOS_FILE)
    registry: dict[str, Scenario] = {}
    for scenario in [*builtin(), *extra]:
        if scenario.name in registry:
            raise ScenariosError(f"two scenarios are named {scenario.name!r}")
        registry[scenario.name] = scenario
    return registry
