"""The controller side of a pool of rank processes that run test methods.

The controller (the test runner's process) starts ``world_size`` rank processes
once, each joins one process group (testing/rank_server.py runs inside them),
and then every test method is sent to all ranks over a pipe, naming its class
by module and qualified name, so one pool can serve several test classes. A
test that fails, crashes, hangs or leaks process state breaks the pool, and one
that destroyed a process group retires it; the caller replaces either, so the
next test gets fresh ranks.
"""

import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import tempfile
import time
import weakref
from typing import Dict, List, Optional

from testing import devices
from testing import rank_protocol
from testing import rank_server
from testing.rank_protocol import RankResult, RunRequest

# How long the other ranks may still run after one rank failed or died, before
# they are reported as stuck (typically waiting in a collective for the dead one).
FAILURE_GRACE_S = 3.0
START_TIMEOUT_S = 120.0
_LIVE_POOLS = weakref.WeakSet()


class PoolStartError(Exception):
    """The rank processes could not be started or could not form a group."""


class RankPool:
    """``world_size`` rank processes that run test methods of any importable class.

    ``log_dir`` is where the ranks log until a test names another directory
    (each test class logs under its own, see :meth:`run`).
    """

    def __init__(
        self, world_size: int, device_kind: devices.DeviceKind, start_method: str, log_dir: str
    ):
        self.world_size = world_size
        self.device_kind = device_kind
        self.start_method = start_method
        self.broken = False
        # Why the ranks must not serve another test although they are healthy ("": they may).
        self.retired = ""
        self.info: Dict[str, object] = {}
        self._context = multiprocessing.get_context(start_method)
        self._processes: List[multiprocessing.Process] = []
        self._conns = []
        self._use_log_dir(log_dir)
        self._logs_start = [0] * world_size  # log offsets where the current test began
        # Modules a forked rank has: those the runner had imported when it forked.
        self._modules_at_start = frozenset()
        self._store_dir = tempfile.mkdtemp(prefix="rendezvous-", dir=os.environ.get("TEST_TMPDIR"))
        _LIVE_POOLS.add(self)

    def _use_log_dir(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.log_paths = [rank_protocol.log_path(log_dir, r) for r in range(self.world_size)]
        os.makedirs(log_dir, exist_ok=True)

    def can_run(self, test_class) -> bool:
        """False if the ranks cannot have ``test_class``: forked before its module loaded.

        Ranks started by forkserver or spawn import a missing module themselves.
        """
        if self._context.get_start_method() != "fork":
            return True
        return test_class.__module__ in self._modules_at_start

    def start(self) -> None:
        """Starts the ranks and waits until each has joined the process group."""
        if self._context.get_start_method() == "fork":
            _refuse_fork_after_accelerator_init(self.device_kind)
        store_path = os.path.join(self._store_dir, "store")
        self._modules_at_start = frozenset(sys.modules)
        for rank in range(self.world_size):
            parent_conn, child_conn = self._context.Pipe()
            process = self._context.Process(
                target=rank_server.rank_main,
                name=f"rank{rank}",
                daemon=True,
                args=(
                    rank,
                    self.world_size,
                    self.device_kind.name,
                    store_path,
                    child_conn,
                    self.log_dir,
                ),
            )
            process.start()
            child_conn.close()
            self._processes.append(process)
            self._conns.append(parent_conn)
        results = self._collect("start", START_TIMEOUT_S)
        failed = [r for r in results if r.status != "ok"]
        if failed:
            self.kill()
            raise PoolStartError(
                f"could not start {self.world_size} ranks on "
                f"{self.device_kind.name}/{self.device_kind.backend}:\n" + format_results(failed)
            )
        self.info = results[0].detail  # rank 0's _describe()

    def run(
        self,
        test_class,
        method_name: str,
        test_id: str,
        timeout_s: float,
        log_dir: Optional[str] = None,
    ) -> List[RankResult]:
        """Runs one test method on every rank; returns each rank's result.

        The ranks find ``test_class`` by module and qualified name, and log to
        ``log_dir`` (default: where they log now) from this test on.
        """
        if log_dir is not None and log_dir != self.log_dir:
            self._use_log_dir(log_dir)
        request = RunRequest(
            test_class.__module__, test_class.__qualname__, method_name, test_id, self.log_dir
        )
        self._logs_start = [_file_size(p) for p in self.log_paths]
        for conn in self._conns:
            conn.send(request)
        results = self._collect(test_id, timeout_s)
        if any(r.status not in ("ok", "skip") for r in results):
            self.broken = True
        for r in results:
            if r.status == "ok" and isinstance(r.detail, dict):
                self.retired = self.retired or str(r.detail.get(rank_protocol.RETIRE, ""))
        return results

    def _collect(self, what: str, timeout_s: float) -> List[RankResult]:
        """Waits for one reply per rank, noticing deaths and hangs."""
        results: Dict[int, RankResult] = {}
        deadline = time.monotonic() + timeout_s
        grace_end = None
        while len(results) < self.world_size:
            pending = [r for r in range(self.world_size) if r not in results]
            end = deadline if grace_end is None else min(deadline, grace_end)
            waitables = {}
            for r in pending:
                waitables[self._conns[r]] = r
                waitables[self._processes[r].sentinel] = r
            ready = multiprocessing.connection.wait(
                list(waitables), timeout=max(0.0, end - time.monotonic())
            )
            if not ready:
                break
            for obj in ready:
                rank = waitables[obj]
                if rank in results:
                    continue
                result = self._receive(rank)
                if result is None:
                    continue
                results[rank] = result
                if result.status not in ("ok", "skip") and grace_end is None:
                    grace_end = time.monotonic() + FAILURE_GRACE_S
        stuck = [r for r in range(self.world_size) if r not in results]
        if stuck:
            self.broken = True
            stacks = self.dump_stacks(stuck)
            if grace_end is not None and time.monotonic() < deadline:
                why = (
                    f"still running {FAILURE_GRACE_S:.0f} s after another "
                    "rank failed (likely waiting in a collective for it)"
                )
            else:
                why = f"{what} did not finish within {timeout_s:.1f} s"
            for r in stuck:
                results[r] = RankResult(
                    r, "hung", f"{why}; its Python stack:\n" + stacks.get(r, "(no stack dumped)")
                )
        return [results[r] for r in range(self.world_size)]

    def _receive(self, rank: int) -> Optional[RankResult]:
        """Reads rank's reply, or reports its death; None if nothing yet."""
        conn, process = self._conns[rank], self._processes[rank]
        try:
            if conn.poll():
                status, detail = conn.recv()
                return RankResult(rank, status, detail)
        except (EOFError, OSError):
            pass
        if process.is_alive():
            process.join(0.2)  # the pipe closed: the process is on its way out
        if process.exitcode is None:
            return None
        return RankResult(
            rank,
            "died",
            describe_exit(process.exitcode) + "; end of its log:\n" + self.log_tail(rank),
        )

    def dump_stacks(self, ranks: List[int]) -> Dict[int, str]:
        """Asks ``ranks`` to write their Python stacks; returns them by rank."""
        before = {r: _file_size(self.log_paths[r]) for r in ranks}
        for r in ranks:
            if self._processes[r].is_alive():
                os.kill(self._processes[r].pid, rank_protocol.STACK_DUMP_SIGNAL)
        time.sleep(0.5)
        return {r: trim_stack(_read_from(self.log_paths[r], before[r])).strip() for r in ranks}

    def log_tail(self, rank: int, lines: int = 30) -> str:
        """Returns the last ``lines`` this rank logged during the current test."""
        text = trim_stack(_read_from(self.log_paths[rank], self._logs_start[rank]))
        return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty)"

    def close(self) -> None:
        """Ends the ranks: cleanly if the pool is healthy, by SIGKILL otherwise."""
        if not self.broken:
            for conn in self._conns:
                try:
                    conn.send(rank_protocol.EXIT)
                except (BrokenPipeError, OSError):
                    pass
            for process in self._processes:
                process.join(10)
        self.kill()

    def kill(self) -> None:
        """Kills every rank that is still alive and waits for it."""
        for process in self._processes:
            if process.is_alive():
                process.kill()
        for process in self._processes:
            process.join(5)
        for conn in self._conns:
            conn.close()
        self._processes, self._conns = [], []
        _LIVE_POOLS.discard(self)


def kill_all_pools() -> None:
    """Kills the ranks of every live pool (used on SIGTERM and at exit)."""
    for pool in list(_LIVE_POOLS):
        pool.kill()


def format_results(results: List[RankResult]) -> str:
    """Formats the failing ranks' results, one block per rank."""
    blocks = []
    for r in results:
        blocks.append(f"--- rank {r.rank}: {r.status} ---\n{str(r.detail).rstrip()}")
    return "\n".join(blocks)


def describe_exit(exitcode: int) -> str:
    """Describes a process exit code, naming the signal for negative codes."""
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"killed by signal {name} (exit code {exitcode})"
    return f"exited with code {exitcode} before reporting a result"


def trim_stack(text: str) -> str:
    """Drops the frames below a rank's entry point from faulthandler dumps.

    Forked ranks inherit the runner's stack (unittest, absltest, the fork
    itself); only the frames from the ranks' entry point up say what the rank did.
    """
    entry = f" in {rank_protocol.ENTRY_POINT}"
    kept, skipping = [], False
    for line in text.splitlines():
        if skipping and line.startswith("  File "):
            continue
        skipping = False
        kept.append(line)
        if line.startswith("  File ") and line.endswith(entry):
            skipping = True
    return "\n".join(kept)


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _read_from(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _refuse_fork_after_accelerator_init(kind: devices.DeviceKind) -> None:
    """Forked ranks cannot use an accelerator the parent already initialized."""
    if not kind.is_accelerator:
        return
    module = kind.torch_module()
    initialized = getattr(module, "is_initialized", lambda: False)()
    if initialized:
        raise PoolStartError(
            f"{kind.name} was initialized in the test runner before the ranks "
            "were forked; use --start_method=forkserver or keep the runner "
            "free of device work"
        )
