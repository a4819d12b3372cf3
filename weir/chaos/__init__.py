"""Chaos testing: a fault-injecting proxy, process faults, fault schedules and the lost/dup/order checker.

- :mod:`weir.chaos.proxy` — ``open_proxy`` → ``FaultProxy`` (latency, bandwidth, timeout, reset_peer,
  slicer, limit_data, down), a sans-IO fault pipeline behind real sockets.
- :mod:`weir.chaos.processes` — kill -9 / restart / SIGSTOP of weir and redis-server; simulator failures.
- :mod:`weir.chaos.schedule` — ``Schedule`` of timed faults (one JSON line, replayable), ``run_schedule``,
  and the hypothesis strategy ``schedules()``.
- :mod:`weir.chaos.checker` — ``RunSampler`` during the run, ``check_run`` after it → ``RunReport``.
"""

from weir.chaos.checker import RunReport, RunSampler, check_run, offered_from_config
from weir.chaos.processes import (
    InProcessHub,
    SimProcessHub,
    WeirProcess,
    open_weir_process,
    weir_run_args,
)
from weir.chaos.proxy import (
    Bandwidth,
    Direction,
    Down,
    FaultProxy,
    Latency,
    LimitData,
    ResetPeer,
    Slicer,
    Timeout,
    open_proxy,
)
from weir.chaos.schedule import (
    FaultRecord,
    Schedule,
    Targets,
    TimedFault,
    run_schedule,
    schedules,
)

__all__ = [
    "Bandwidth",
    "Direction",
    "Down",
    "FaultProxy",
    "FaultRecord",
    "InProcessHub",
    "Latency",
    "LimitData",
    "ResetPeer",
    "RunReport",
    "RunSampler",
    "Schedule",
    "SimProcessHub",
    "Slicer",
    "Targets",
    "TimedFault",
    "Timeout",
    "WeirProcess",
    "check_run",
    "offered_from_config",
    "open_proxy",
    "open_weir_process",
    "run_schedule",
    "schedules",
    "weir_run_args",
]
