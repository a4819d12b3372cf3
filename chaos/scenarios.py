"""Your own chaos scenarios: ``weir chaos`` loads this file when run from the directory above it
(or give ``weir chaos --scenarios-file PATH``), after the built-in ones (weir/chaos/scenarios/).

``registry()`` returns :class:`weir.chaos.scenario.Scenario` values; names must not repeat a
built-in one (``weir chaos --list``). For example::

    from weir.chaos.scenario import Scenario, fault
    from weir.chaos.schedule import Schedule

    def registry():
        return [
            Scenario(
                name="my-redis-kill-long",
                label="redis-server kill -9, down 3 s",
                schedule=Schedule(seed=101, faults=[fault("redis", "kill", 1.0, 3.0)]),
                expect=("sink_unavailable", "sink_available"),
                max_restarts=0,
            ),
        ]

How to write one, and what the engine checks: docs/resilience.md.
"""

from __future__ import annotations


def registry() -> list[object]:
    return []
