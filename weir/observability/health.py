"""Readiness: is every pipeline connected and persisting? (Served as /readyz; also a metric.)

A partition is ready when
  - its pipeline's actors are all running (not between the stop and the start of a restart),
  - its source is connected (receiving from the network),
  - nothing is pending, or a durable write happened within ``stale_after`` seconds,
  - every circuit breaker it depends on (Redis, its network's node) is closed.

A delivery (``weir deliver``, or deliver.with_run), listed as ``deliver:<pipeline>/<partition>``, is
ready while its consumer group can be sampled (Redis answers, the group exists).

Everything is read from the live statistics objects; nothing here is on the hot path.
"""

from __future__ import annotations

from typing import Any

import attrs

from weir.redact import redact_text
from weir.supervision import BreakerState, CircuitBreaker


def partition_labels(view: Any) -> tuple[str, str]:
    """``(source, partition)`` of a PartitionView named ``"<network>/<partition>"``."""
    source, _, partition = view.name.partition("/")
    return source, partition


def breakers_of(service: Any) -> list[tuple[CircuitBreaker, str | None]]:
    """Every circuit breaker of the service, with the network it belongs to (None: shared by all).

    Networks are not asked for their breakers (the Network interface has no such method): any
    CircuitBreaker among a network object's attributes (or inside a list, tuple or dict attribute)
    counts, so a new network's breakers are found without wiring.
    """
    found: list[tuple[CircuitBreaker, str | None]] = []
    seen: set[int] = set()

    def add(candidate: Any, network: str | None) -> None:
        if isinstance(candidate, CircuitBreaker) and id(candidate) not in seen:
            seen.add(id(candidate))
            found.append((candidate, network))

    add(getattr(service, "breaker", None), None)
    for network in getattr(service, "networks", ()):
        try:
            attributes = list(vars(network).values())
        except TypeError:  # __slots__ only
            attributes = [getattr(network, name, None) for name in getattr(type(network), "__slots__", ())]
        for value in attributes:
            if isinstance(value, dict):
                for item in value.values():
                    add(item, network.name)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    add(item, network.name)
            else:
                add(value, network.name)
    return found


def is_pending(view: Any) -> bool:
    """Whether the partition has received events that are not durable yet.

    Either events are inside the pipeline (past the filter, not yet written), or the source has
    read past the durable cursor (a chunk on its way into the pipeline, or a replay catching up).
    """
    sink = view.sink
    if getattr(sink, "in_flight", 0) > 0:
        return True
    last_id = getattr(view.source, "last_id", None)
    if last_id is None:
        return False
    if sink.cursor is None:
        return True
    try:
        return bool(last_id > sink.cursor)
    except TypeError:  # a source whose positions do not compare with the cursor
        return False


def durable_lag_seconds(view: Any, now: float) -> float:
    """0 when nothing is pending, else seconds since the last durable write (since start if none)."""
    if not is_pending(view):
        return 0.0
    since = view.sink.last_write
    if since is None:
        since = getattr(view.sink, "started_at", None)
    return max(0.0, now - since) if since is not None else 0.0


@attrs.frozen
class Readiness:
    """The verdict and, per partition, what is wrong (an empty list: that partition is ready)."""

    ready: bool
    partitions: dict[str, list[str]]
    breakers: dict[str, str]

    def as_json(self) -> dict[str, Any]:
        return {
            "status": "ready" if self.ready else "not ready",
            "partitions": {
                name: ({"ready": False, "problems": problems} if problems else {"ready": True})
                for name, problems in self.partitions.items()
            },
            "breakers": self.breakers,
        }


def readiness(service: Any, *, now: float, stale_after: float) -> Readiness:
    """Check every partition of ``service`` (see the module docstring); ``now`` is trio's clock."""
    breakers = breakers_of(service)
    open_breakers = [(b, network) for b, network in breakers if b.state is not BreakerState.CLOSED]
    partitions: dict[str, list[str]] = {}
    for view in service.partitions:
        problems = partition_problems(view, now=now, stale_after=stale_after)
        source, _ = partition_labels(view)
        for breaker, network in open_breakers:
            if network is None or network == source:
                problems.append(f"circuit breaker {breaker.name!r} is {breaker.state.value}")
        # The problems quote errors, which may quote a node's URL: redacted like every output.
        partitions[view.name] = [redact_text(problem) for problem in problems]
    for child, delivery in getattr(getattr(service, "deliveries", None), "by_child", {}).items():
        problems = [] if delivery.sample_error is None else [f"consumer group: {delivery.sample_error}"]
        partitions[f"deliver:{child}"] = [redact_text(problem) for problem in problems]
    ready = bool(partitions) and not any(partitions.values())
    return Readiness(
        ready=ready,
        partitions=partitions,
        breakers={redact_text(b.name): b.state.value for b, _ in breakers},
    )


def partition_problems(view: Any, *, now: float, stale_after: float) -> list[str]:
    """What keeps one partition from being ready, breakers aside."""
    problems: list[str] = []
    supervisor = getattr(view.sink, "supervisor", None)
    if supervisor is not None:
        children = supervisor.statistics().children
        down = [child for child in children if not child.running]
        if down:
            errors = [child.last_error for child in children if child.last_error]
            problems.append(
                "pipeline not running (restarting?): "
                + ", ".join(child.name.rsplit("/", 1)[-1] for child in down)
                + " down"
                + (f"; last error {errors[-1]}" if errors else "")
            )
    source = view.source
    refused = getattr(source, "refused", None)
    if refused:  # until the node sends a plausible position again
        problems.append(f"node refused: {refused}")
    if not getattr(source, "connected", False):
        error = getattr(source, "last_error", None)
        problems.append("source not connected" + (f" (last error: {error})" if error else ""))
    if is_pending(view):
        last_write = view.sink.last_write
        since = last_write if last_write is not None else getattr(view.sink, "started_at", None)
        if since is None or now - since > stale_after:
            what = "no durable write" if last_write is not None else "nothing durable since the start"
            waited = f" for {now - since:.1f} s" if since is not None else ""
            problems.append(f"events pending and {what}{waited} (limit {stale_after:g} s)")
    return problems
