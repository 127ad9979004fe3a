"""What the controller (rank_pool) and the rank processes (rank_server) exchange.

The controller sends a :class:`RunRequest` (or ``EXIT``) over each rank's pipe;
a rank answers every request, and its start, with a ``(status, detail)`` tuple
that the controller turns into a :class:`RankResult`.
"""

import dataclasses
import signal

from testing import devices

# Sent to a rank to make it write every thread's Python stack into its log.
STACK_DUMP_SIGNAL = signal.SIGUSR1
# The rank processes' entry point (rank_server.rank_main): frames below it in a
# stack dump are the runner's, inherited through fork.
ENTRY_POINT = "rank_main"
EXIT = "exit"
# Key of an "ok" answer's detail dict when the test passed but the ranks must not
# serve another (it destroyed a process group; see testing/rank_state.py).
RETIRE = "retire"


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """One test method to run: the class by module and qualified name.

    Sending names rather than the class lets ranks started once serve the
    methods of any class they can import (session-wide pools under pytest).
    """

    module: str
    qualname: str
    method: str
    test_id: str
    log_dir: str  # the rank writes to <log_dir>/rank<r>.log while it runs this


@dataclasses.dataclass
class RankResult:
    """What one rank reported for one test."""

    rank: int
    status: str  # ok | skip | error | leaked | died | hung
    # A message; rank 0's facts dict on a good start; {RETIRE: why} on an "ok" after
    # which the ranks must be replaced.
    detail: object = ""


@dataclasses.dataclass
class RankContext:
    """What a test method sees of its rank."""

    rank: int
    world_size: int
    device_kind: devices.DeviceKind
    device: object  # torch.device


def log_path(log_dir: str, rank: int) -> str:
    """The log file of ``rank`` under ``log_dir``: ``<log_dir>/rank<r>.log``."""
    return f"{log_dir}/rank{rank}.log"
