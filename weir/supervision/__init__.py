"""Generic OTP-style supervision for trio: supervisors, backoff and circuit breakers.

Knows nothing of sources, sinks or sockets; anything with the child signature
``async def target(stopping, *, task_status)`` can be supervised.
"""

from .backoff import Backoff, BackoffState
from .breaker import BreakerOpen, BreakerState, BreakerStatistics, CircuitBreaker
from .intensity import RestartWindow
from .spec import (
    ChildSpec,
    ChildStatistics,
    Restart,
    Strategy,
    SupervisionEvent,
    SupervisorStatistics,
)
from .supervisor import Supervisor, SupervisorEscalation

__all__ = [
    "Backoff",
    "BackoffState",
    "BreakerOpen",
    "BreakerState",
    "BreakerStatistics",
    "ChildSpec",
    "ChildStatistics",
    "CircuitBreaker",
    "Restart",
    "RestartWindow",
    "Strategy",
    "SupervisionEvent",
    "Supervisor",
    "SupervisorEscalation",
    "SupervisorStatistics",
]
