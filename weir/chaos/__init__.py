"""Chaos testing: a fault-injecting proxy, process faults, fault schedules and the lost/dup/order checker.

- :mod:`weir.chaos.proxy` — ``open_proxy`` → ``FaultProxy`` (latency, bandwidth, timeout, reset_peer,
  slicer, limit_data, down), a sans-IO fault pipeline behind real sockets.
- :mod:`weir.chaos.processes` — kill -9 / restart / SIGSTOP of weir and redis-server; simulator failures.
- :mod:`weir.chaos.schedule` — ``Schedule`` of timed faults (one JSON line, replayable), ``run_schedule``,
  the seeded generator ``generate_schedule`` and its hypothesis strategy ``schedules()``.
- :mod:`weir.chaos.checker` — ``RunSampler`` during the run, ``check_run`` after it → ``RunReport``.
- :mod:`weir.chaos.source` — what a network must provide to be driven (``ChaosSource``);
  :mod:`weir.chaos.farcaster` is the Snapchain one.
- :mod:`weir.chaos.delivery` — ``weir deliver`` beside ``weir run`` in a scenario (its kills land
  mid-work); :mod:`weir.chaos.delivery_targets` (Parquet, NATS JetStream on a
  :mod:`weir.chaos.nats_server`) and :mod:`weir.chaos.delivery_check`, what a target received
  against the streams.
- :mod:`weir.chaos.scenario`, :mod:`weir.chaos.scenarios` (built-in), :mod:`weir.chaos.registry`
  (built-in + a user's file) and :mod:`weir.chaos.suite` (the engine, ``weir chaos``).
"""

from weir.chaos.checker import RunReport, RunSampler, check_run
from weir.chaos.farcaster import FarcasterSource, offered_from_config
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
    generate_schedule,
    run_schedule,
    schedules,
)

__all__ = [
    "Bandwidth",
    "Direction",
    "Down",
    "FaultProxy",
    "FarcasterSource",
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
    "generate_schedule",
    "run_schedule",
    "schedules",
    "weir_run_args",
]
